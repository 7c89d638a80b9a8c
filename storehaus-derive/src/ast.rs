//! The parsed model of a `#[derive(Cached)]` struct.

use syn::{Data, DeriveInput, Fields, FieldsNamed, Generics, Ident, Type};

use crate::attr;
use crate::case::{self, RenameRule};
use crate::ctxt::Ctxt;
use crate::symbol::ID;

/// A struct with named fields and no generics: the only shape a record has.
pub struct Container<'a> {
    pub ident: &'a Ident,
    pub attrs: attr::Container,
    pub fields: Vec<Field<'a>>,
    pub original: &'a DeriveInput,
}

/// One field of the record.
pub struct Field<'a> {
    pub ident: &'a Ident,
    pub ty: &'a Type,
    pub attrs: attr::Field,
    /// The column name: `rename`, else the field name through `rename_all`;
    /// `None` for a `#[sqlx(skip)]` field.
    pub column: Option<String>,
    pub original: &'a syn::Field,
}

impl<'a> Container<'a> {
    /// Reads the struct; `None` (with the error recorded) for any other shape.
    /// Attributes are read first so their mistakes are reported together with
    /// a wrong shape.
    pub fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let attrs = attr::Container::from_ast(cx, &input.attrs);
        let named = named_fields(cx, input);
        if !no_generics(cx, &input.generics) {
            return None;
        }
        let rename_all = attrs.rename_all;
        let fields = named?
            .named
            .iter()
            .filter_map(|field| Field::from_ast(cx, field, rename_all))
            .collect();
        Some(Container {
            ident: &input.ident,
            attrs,
            fields,
            original: input,
        })
    }
}

/// The fields of a struct with named fields; any other shape is recorded as
/// an error.
fn named_fields<'a>(cx: &Ctxt, input: &'a DeriveInput) -> Option<&'a FieldsNamed> {
    match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => Some(named),
            Fields::Unnamed(unnamed) => {
                cx.error_spanned_by(
                    unnamed,
                    "#[derive(Cached)] does not support tuple structs: name each field after its column, e.g. `struct User { id: i64, name: String }`",
                );
                None
            }
            Fields::Unit => {
                cx.error_spanned_by(
                    &input.ident,
                    "#[derive(Cached)] does not support unit structs: a record needs named fields, one per column, e.g. `struct User { id: i64, name: String }`",
                );
                None
            }
        },
        Data::Enum(data) => {
            cx.error_spanned_by(
                data.enum_token,
                "#[derive(Cached)] does not support enums: a record is one table row, so write a struct with one named field per column",
            );
            None
        }
        Data::Union(data) => {
            cx.error_spanned_by(
                data.union_token,
                "#[derive(Cached)] does not support unions: a record is one table row, so write a struct with one named field per column",
            );
            None
        }
    }
}

/// Whether the item has no generic parameters and no where clause; if it
/// has, the error is recorded.
fn no_generics(cx: &Ctxt, generics: &Generics) -> bool {
    if !generics.params.is_empty() {
        let message = if generics.lifetimes().next().is_some() {
            "#[derive(Cached)] does not support generic parameters yet: a cached record must be 'static, so use owned field types (String instead of &'a str) and remove the lifetime"
        } else {
            "#[derive(Cached)] does not support generic parameters yet: write a concrete struct for each record type"
        };
        cx.error_spanned_by(generics, message);
        return false;
    }
    if let Some(where_clause) = &generics.where_clause {
        cx.error_spanned_by(
            where_clause,
            "#[derive(Cached)] does not support where clauses yet: remove it",
        );
        return false;
    }
    true
}

impl<'a> Field<'a> {
    /// Reads a named field and works out its column: `rename`, else the
    /// field name through the struct's `rename_all`; none if `skip`.
    fn from_ast(cx: &Ctxt, field: &'a syn::Field, rename_all: Option<RenameRule>) -> Option<Self> {
        // Named fields always have an ident.
        let ident = field.ident.as_ref()?;
        let attrs = attr::Field::from_ast(cx, &field.attrs);
        let column = if attrs.skip.is_some() {
            None
        } else if let Some(rename) = &attrs.rename {
            Some(rename.clone())
        } else {
            let name = case::unraw(ident);
            Some(match rename_all {
                Some(rule) => rule.apply(&name),
                None => name,
            })
        };
        Some(Field {
            ident,
            ty: &field.ty,
            attrs,
            column,
            original: field,
        })
    }
}

impl<'a> Container<'a> {
    /// The SQL table: `table = "..."`, else the struct name in snake_case.
    pub fn table(&self) -> String {
        match &self.attrs.table {
            Some(table) => table.value(),
            None => case::snake_case(&case::unraw(self.ident)),
        }
    }

    /// The cache prefix: `prefix = "..."`, else the table.
    pub fn prefix(&self) -> String {
        match &self.attrs.prefix {
            Some(prefix) => prefix.value(),
            None => self.table(),
        }
    }

    /// The fields marked `#[cache(id)]`.
    pub fn marked_ids(&self) -> impl Iterator<Item = &Field<'a>> {
        self.fields.iter().filter(|field| field.attrs.id.is_some())
    }

    /// The primary-key field: the first one marked `#[cache(id)]`, else the
    /// field named `id`. `check.rs` makes sure there is exactly one.
    pub fn id_field(&self) -> Option<&Field<'a>> {
        self.marked_ids()
            .next()
            .or_else(|| self.fields.iter().find(|field| case::unraw(field.ident) == ID.as_str()))
    }

    /// The fields that are columns (not `#[sqlx(skip)]`), in field order,
    /// with their column names.
    pub fn columns(&self) -> impl Iterator<Item = (&Field<'a>, &str)> {
        self.fields
            .iter()
            .filter_map(|field| Some((field, field.column.as_deref()?)))
    }
}
