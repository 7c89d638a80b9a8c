//! Semantic checks: the keys parse, but do they make sense together?

use storehaus_limits::{is_key_safe, is_reserved_prefix, MAX_TTL_SECS};

use crate::ast::Container;
use crate::attr::{self, Ttl};
use crate::ctxt::Ctxt;
use crate::symbol::ID;

/// Records every semantic mistake of `cont` in `cx`.
pub fn check(cx: &Ctxt, cont: &Container) {
    let table_ok = check_table(cx, cont);
    check_prefix(cx, cont, table_ok);
    if let Some(ttl) = &cont.attrs.ttl {
        check_ttl(cx, ttl);
    }
    check_id(cx, cont);
    check_fields(cx, cont);
    check_indexes(cx, cont);
}

/// `#[cache(index)]`: on a column, not the id, and of a type with exact
/// equality (a float's `Display` form does not round-trip, and NaN is not
/// equal to itself).
fn check_indexes(cx: &Ctxt, cont: &Container) {
    let id = cont.id_field().map(|f| f.ident);
    for field in &cont.fields {
        let Some(index) = &field.attrs.index else { continue };
        if field.attrs.skip.is_some() {
            cx.error_spanned_by(
                index,
                format!(
                    "#[cache(index)] on `{}`, a #[sqlx(skip)] field: an index is a lookup by a column, so remove #[sqlx(skip)] or the index",
                    field.ident
                ),
            );
        } else if Some(field.ident) == id {
            cx.error_spanned_by(
                index,
                format!(
                    "#[cache(index)] on `{}`, the primary key: records are already cached by id, so remove #[cache(index)] and use get_by_id",
                    field.ident
                ),
            );
        } else if let Some(float) = float_type(field.ty) {
            cx.error_spanned_by(
                field.ty,
                format!(
                    "#[cache(index)] on `{}`, of type `{float}`: a float cannot be a unique lookup key (its text form does not round-trip and NaN is not equal to itself); index an integer, string or uuid column",
                    field.ident
                ),
            );
        }
    }
}

/// `f32` or `f64`, also inside `Option<...>`.
fn float_type(ty: &syn::Type) -> Option<&'static str> {
    let syn::Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident == "f32" {
        return Some("f32");
    }
    if last.ident == "f64" {
        return Some("f64");
    }
    if last.ident == "Option" {
        if let syn::PathArguments::AngleBracketed(args) = &last.arguments {
            if let Some(syn::GenericArgument::Type(inner)) = args.args.first() {
                return float_type(inner);
            }
        }
    }
    None
}

/// Whether `c` may appear in a table or prefix: the byte rule of the cache
/// key grammar, shared with the runtime.
fn is_safe(c: char) -> bool {
    u8::try_from(c).is_ok_and(is_key_safe)
}

const SAFE_SET: &str = "use only letters, digits, '_', '.' and '-'";

fn check_table(cx: &Ctxt, cont: &Container) -> bool {
    let table = cont.table();
    match &cont.attrs.table {
        Some(lit) => {
            if table.is_empty() {
                let default = crate::case::snake_case(&crate::case::unraw(cont.ident));
                cx.error_spanned_by(
                    lit,
                    format!("`table` must not be empty: write table = \"users\", or remove the key to use the default `{default}`"),
                );
                return false;
            }
            if let Some(bad) = table.chars().find(|c| !is_safe(*c)) {
                cx.error_spanned_by(
                    lit,
                    format!("table {table:?} holds {bad:?}: {SAFE_SET} (a '.' separates schema and table, e.g. table = \"public.users\")"),
                );
                return false;
            }
            if table.split('.').any(str::is_empty) {
                cx.error_spanned_by(
                    lit,
                    format!("table {table:?} has an empty name around '.': write table = \"users\" or table = \"schema.users\""),
                );
                return false;
            }
            true
        }
        None => {
            if let Some(bad) = table.chars().find(|c| !is_safe(*c)) {
                cx.error_spanned_by(
                    cont.ident,
                    format!("the default table {table:?} (the struct name in snake_case) holds {bad:?}: add #[cache(table = \"...\")] and {SAFE_SET}"),
                );
                return false;
            }
            true
        }
    }
}

fn check_prefix(cx: &Ctxt, cont: &Container, table_ok: bool) {
    let prefix = cont.prefix();
    match &cont.attrs.prefix {
        Some(lit) => {
            if prefix.is_empty() {
                cx.error_spanned_by(
                    lit,
                    "`prefix` must not be empty: write prefix = \"users\", or remove the key to use the table name",
                );
            } else if let Some(bad) = prefix.chars().find(|c| !is_safe(*c)) {
                cx.error_spanned_by(
                    lit,
                    format!("prefix {prefix:?} holds {bad:?}: {SAFE_SET}, e.g. prefix = \"users\""),
                );
            } else if is_reserved_prefix(&prefix) {
                cx.error_spanned_by(
                    lit,
                    format!(
                        "prefix {prefix:?} starts with \"__\", which StoreHaus reserves for its own keys: write e.g. prefix = {:?}",
                        suggestion(&prefix)
                    ),
                );
            }
        }
        // The table was checked already; only the reserved start is left.
        None if table_ok && is_reserved_prefix(&prefix) => {
            let message = format!(
                "the cache prefix defaults to the table name, and {prefix:?} starts with \"__\", which StoreHaus reserves for its own keys: add prefix = {:?}",
                suggestion(&prefix)
            );
            match &cont.attrs.table {
                Some(lit) => cx.error_spanned_by(lit, message),
                None => cx.error_spanned_by(cont.ident, message),
            }
        }
        None => {}
    }
}

/// A prefix without the reserved leading underscores.
fn suggestion(prefix: &str) -> String {
    let trimmed = prefix.trim_start_matches('_');
    if trimmed.is_empty() {
        "records".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn check_ttl(cx: &Ctxt, ttl: &Ttl) {
    if ttl.seconds == 0 {
        cx.error_spanned_by(
            &ttl.tokens,
            "`ttl` must be at least 1 second: write e.g. ttl = 3600, or remove the key to use the CacheConfig default",
        );
    } else if ttl.seconds > u128::from(MAX_TTL_SECS) {
        cx.error_spanned_by(
            &ttl.tokens,
            format!(
                "`ttl` is more than one year: write at most ttl = {} (365 days), or remove the key to use the CacheConfig default",
                attr::max_ttl_literal()
            ),
        );
    }
}

fn check_id(cx: &Ctxt, cont: &Container) {
    let marked: Vec<_> = cont.marked_ids().collect();
    if let [first, rest @ ..] = marked.as_slice() {
        for other in rest {
            if let Some(id) = &other.attrs.id {
                cx.error_spanned_by(
                    id,
                    format!(
                        "`{}` and `{}` are both marked #[cache(id)]: a record has exactly one primary key, so keep #[cache(id)] on one field (composite keys are not supported)",
                        first.ident, other.ident
                    ),
                );
            }
        }
        for field in &marked {
            if let (Some(id), Some(_)) = (&field.attrs.id, &field.attrs.skip) {
                cx.error_spanned_by(
                    id,
                    format!(
                        "#[cache(id)] on `{}`, a #[sqlx(skip)] field: the primary key must be a column, so remove #[sqlx(skip)] or mark another field",
                        field.ident
                    ),
                );
            }
        }
        return;
    }
    match cont.id_field() {
        Some(field) => {
            if let Some(skip) = &field.attrs.skip {
                cx.error_spanned_by(
                    skip,
                    "the field `id` is the primary key by default, but it is #[sqlx(skip)]: remove #[sqlx(skip)], or mark the primary-key column with #[cache(id)]",
                );
            }
        }
        None => cx.error_spanned_by(
            cont.ident,
            format!(
                "`{}` has no primary key: mark the primary-key field with #[cache({ID})] or name it `id`",
                cont.ident
            ),
        ),
    }
}

fn check_fields(cx: &Ctxt, cont: &Container) {
    for field in &cont.fields {
        if let Some(flatten) = &field.attrs.flatten {
            cx.error_spanned_by(
                flatten,
                "#[sqlx(flatten)] is not supported by #[derive(Cached)]: a record maps to the columns of one table, so list the nested struct's columns as fields here",
            );
        }
        if let Some(json) = &field.attrs.json {
            cx.error_spanned_by(
                json,
                "#[sqlx(json)] is not supported by #[derive(Cached)], which also writes the field: declare it as `sqlx::types::Json<T>` instead",
            );
        }
        if let Some(try_from) = &field.attrs.try_from {
            cx.error_spanned_by(
                try_from,
                "#[sqlx(try_from)] is not supported by #[derive(Cached)], which also writes the field: give the field the column's own type",
            );
        }
    }
    let columns: Vec<_> = cont.columns().collect();
    for (i, (field, column)) in columns.iter().enumerate() {
        if column.is_empty() {
            cx.error_spanned_by(
                field.ident,
                format!(
                    "#[sqlx(rename = \"\")] gives `{}` an empty column name: write the column's name",
                    field.ident
                ),
            );
        } else if let Some((first, _)) = columns[..i].iter().find(|(_, c)| c == column) {
            cx.error_spanned_by(
                field.ident,
                format!(
                    "`{}` and `{}` both map to the column \"{column}\": give one of them its own #[sqlx(rename = \"...\")]",
                    first.ident, field.ident
                ),
            );
        }
    }
}
