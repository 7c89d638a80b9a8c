//! The generated code of a valid record: `impl Cached`, the SQLite binder and
//! `cache_key`, beside the column handles (`handles`) and the trait checks
//! (`assert`). On any error it hands over to `fallback`.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, ToTokens};
use syn::DeriveInput;

use crate::assert;
use crate::ast::{Container, Field};
use crate::bound;
use crate::check;
use crate::ctxt::Ctxt;
use crate::fallback;
use crate::fingerprint::fingerprint;
use crate::handles;
use crate::private;
use crate::sql::{self, Dialect};

/// Expands `#[derive(Cached)]`: the impl, or every error with a fallback.
pub fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let cont = Container::from_ast(&cx, input);
    if let Some(cont) = &cont {
        check::check(&cx, cont);
    }
    let result = cx.check();
    match (cont, result) {
        (Some(cont), Ok(())) => match impl_cached(&cont) {
            Ok(tokens) => tokens,
            Err(err) => fallback::expand(Some(&cont), err),
        },
        (cont, Err(err)) => fallback::expand(cont.as_ref(), err),
        (None, Ok(())) => fallback::expand(
            None,
            syn::Error::new(Span::call_site(), "#[derive(Cached)] could not read this item"),
        ),
    }
}

/// The primary key among the columns, as the statements and binders need it.
struct Layout<'c> {
    /// The primary-key field.
    id: &'c Field<'c>,
    /// Every column name, in field order.
    names: Vec<&'c str>,
    /// Where the id is in `names`.
    id_index: usize,
    /// The value fields (every column but the id), in field order.
    values: Vec<&'c syn::Ident>,
}

impl<'c> Layout<'c> {
    /// `check` has made sure there is one primary key and that it is a
    /// column; an error here is a bug in the derive, reported all the same.
    fn new(cont: &'c Container<'c>) -> syn::Result<Self> {
        let Some(id) = cont.id_field() else {
            return Err(syn::Error::new_spanned(cont.ident, "no primary key"));
        };
        let columns: Vec<_> = cont.columns().collect();
        let Some(id_index) = columns.iter().position(|(field, _)| std::ptr::eq(*field, id)) else {
            return Err(syn::Error::new_spanned(id.ident, "the primary key must be a column"));
        };
        let names = columns.iter().map(|(_, name)| *name).collect();
        let values = columns
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != id_index)
            .map(|(_, (field, _))| field.ident)
            .collect();
        Ok(Layout {
            id,
            names,
            id_index,
            values,
        })
    }
}

fn impl_cached(cont: &Container) -> syn::Result<TokenStream> {
    let layout = Layout::new(cont)?;
    let id_ty = layout.id.ty.to_token_stream();
    let cached = cached_impl(cont, &layout, &id_ty);
    let sqlite_binder = sqlite_binder(cont, &layout);
    let cache_key = cache_key(cont, &id_ty);
    let handles = handles::expand(cont);
    let asserts = assert::traits_and_columns(cont, Some(&id_ty));
    Ok(quote! {
        #cached

        #sqlite_binder

        #cache_key

        #handles

        #asserts
    })
}

/// `impl Cached for User`.
fn cached_impl(cont: &Container, layout: &Layout, id_ty: &TokenStream) -> TokenStream {
    let p = private::path();
    let ident = cont.ident;
    let id_member = layout.id.ident;
    let names = &layout.names;
    let id_column = names[layout.id_index];
    let table = cont.table();
    let prefix = cont.prefix();
    let ttl = match &cont.attrs.ttl {
        // Range-checked by `check`: 1 ..= MAX_TTL_SECS.
        Some(ttl) => {
            let seconds = Literal::u64_suffixed(u64::try_from(ttl.seconds).unwrap_or(u64::MAX));
            quote!(::core::option::Option::Some(#seconds))
        }
        None => quote!(::core::option::Option::None),
    };
    let fingerprint = Literal::u64_suffixed(fingerprint(cont));
    let pg = statements(&sql::statements(Dialect::Postgres, &table, names, layout.id_index));
    let sqlite = statements(&sql::statements(Dialect::Sqlite, &table, names, layout.id_index));
    // Every value type is bounded by `ColumnBounds` (see `bound`), so these
    // never fail: a bad column type is reported once, by `assert`.
    let binds = layout.values.iter().map(|field| quote!(.bind(&self.#field)));
    let bounds = bound::where_clause(cont, Some(id_ty));
    let (index_names, index_members): (Vec<&str>, Vec<&syn::Ident>) = cont
        .columns()
        .filter(|(field, _)| field.attrs.index.is_some())
        .map(|(field, column)| (column, field.ident))
        .unzip();
    quote! {
        #[automatically_derived]
        impl #p::Cached for #ident
        #bounds
        {
            type Id = #id_ty;

            const TABLE: &'static ::core::primitive::str = #table;
            const PREFIX: &'static ::core::primitive::str = #prefix;
            const TTL: ::core::option::Option<::core::primitive::u64> = #ttl;
            const COLUMNS: &'static [&'static ::core::primitive::str] = &[#(#names),*];
            const ID_COLUMN: &'static ::core::primitive::str = #id_column;
            const FINGERPRINT: ::core::primitive::u64 = #fingerprint;
            const PG: #p::Statements = #pg;
            const SQLITE: #p::Statements = #sqlite;

            #[inline]
            fn id(&self) -> &Self::Id {
                &self.#id_member
            }

            #[inline]
            fn bind_values<'q>(&'q self, query: #p::PgQuery<'q>) -> #p::PgQuery<'q> {
                query #(#binds)*
            }

            const INDEXES: &'static [&'static ::core::primitive::str] = &[#(#index_names),*];

            fn index_values(&self) -> ::std::vec::Vec<(&'static ::core::primitive::str, ::std::string::String)> {
                ::std::vec![#((#index_names, #p::index_value(&self.#index_members))),*]
            }
        }
    }
}

/// The SQLite binder, under the same column bounds as the impl, so a bad
/// column type is not reported again from inside `impl_bind_sqlite!`.
fn sqlite_binder(cont: &Container, layout: &Layout) -> TokenStream {
    let p = private::path();
    let ident = cont.ident;
    let values = &layout.values;
    let value_types = bound::value_types(cont);
    quote! {
        #p::impl_bind_sqlite!(#ident; #(#values),*; where #(for<'__storehaus> #value_types: #p::ColumnBounds,)*);
    }
}

/// `User::cache_key(global_prefix, &id)`, with rustdoc.
fn cache_key(cont: &Container, id_ty: &TokenStream) -> TokenStream {
    let p = private::path();
    let ident = cont.ident;
    let prefix = cont.prefix();
    let table = cont.table();
    let summary = format!(" The cache key of the `{ident}` record with this id: `{{global_prefix}}:{prefix}:{{id}}`.");
    let details = format!(
        " The id is rendered with `Display`; characters outside `[A-Za-z0-9_.-]` are \
         percent-encoded. A store built with `CacheParams::with_prefix` uses its own prefix \
         instead of `{prefix}`; `GenericStore::cache_key` gives the key that store uses. \
         Generated by `#[derive(Cached)]` (table `{table}`)."
    );
    quote! {
        #[automatically_derived]
        impl #ident {
            #[doc = #summary]
            #[doc = ""]
            #[doc = #details]
            #[must_use]
            pub fn cache_key(global_prefix: &::core::primitive::str, id: &#id_ty) -> ::std::string::String {
                <#id_ty as #p::AssertCacheId<_>>::record_key(global_prefix, #prefix, id)
            }
        }
    }
}

/// A runtime `Statements` literal.
fn statements(s: &sql::Statements) -> TokenStream {
    let p = private::path();
    let sql::Statements {
        select_by_id,
        select_many,
        insert,
        update,
        delete,
        delete_many,
        select_all,
    } = s;
    quote! {
        #p::Statements {
            select_by_id: #select_by_id,
            select_many: #select_many,
            insert: #insert,
            update: #update,
            delete: #delete,
            delete_many: #delete_many,
            select_all: #select_all,
        }
    }
}
