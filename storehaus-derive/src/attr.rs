//! Reading `#[cache(...)]`, and the keys of sqlx's `#[sqlx(...)]` that decide
//! column names.
//!
//! This module checks syntax only: which keys exist, that each appears once
//! and that its value has the right form. Whether the values make sense
//! together (one id, a valid prefix, a TTL in range) is `check.rs`'s job.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, ExprLit, ExprUnary, Lit, LitStr, Meta, Path, Token, UnOp};

use storehaus_limits::MAX_TTL_SECS;

use crate::case::RenameRule;
use crate::ctxt::Ctxt;
use crate::symbol::{
    Symbol, CACHE, CONTAINER_KEYS, FLATTEN, ID, INDEX, JSON, PREFIX, RENAME, RENAME_ALL, SKIP, SQLX, TABLE, TRY_FROM,
    TTL,
};

/// One key's value, remembering where it was set so a second occurrence can
/// be reported as a duplicate.
struct Attr<'c, T> {
    cx: &'c Ctxt,
    name: Symbol,
    value: Option<T>,
}

impl<'c, T> Attr<'c, T> {
    fn none(cx: &'c Ctxt, name: Symbol) -> Self {
        Attr { cx, name, value: None }
    }

    fn set<A: ToTokens>(&mut self, obj: A, value: T) {
        if self.value.is_some() {
            self.cx.error_spanned_by(
                obj,
                format!("duplicate key `{}` in #[cache(...)]: keep only one", self.name),
            );
        } else {
            self.value = Some(value);
        }
    }

    fn get(self) -> Option<T> {
        self.value
    }
}

/// A `ttl = N` as written.
pub struct Ttl {
    /// The seconds; `u128::MAX` when the literal does not even fit in that.
    pub seconds: u128,
    /// The literal, for spans.
    pub tokens: TokenStream,
}

/// The struct-level keys.
pub struct Container {
    pub table: Option<LitStr>,
    pub prefix: Option<LitStr>,
    pub ttl: Option<Ttl>,
    /// sqlx's `rename_all`, applied to fields without `rename`.
    pub rename_all: Option<RenameRule>,
}

impl Container {
    /// Reads `#[cache(...)]` and `#[sqlx(rename_all = "...")]` on the struct.
    pub fn from_ast(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut table = Attr::none(cx, TABLE);
        let mut prefix = Attr::none(cx, PREFIX);
        let mut ttl = Attr::none(cx, TTL);
        let mut rename_all = None;

        read_attrs(
            cx,
            attrs,
            CONTAINER_EXAMPLE,
            |meta| {
                if meta.path == TABLE {
                    if let Some(s) = parse_lit_str(cx, &meta, TABLE, "users")? {
                        table.set(&meta.path, s);
                    }
                } else if meta.path == PREFIX {
                    if let Some(s) = parse_lit_str(cx, &meta, PREFIX, "users")? {
                        prefix.set(&meta.path, s);
                    }
                } else if meta.path == TTL {
                    if let Some(t) = parse_ttl(cx, &meta)? {
                        ttl.set(&meta.path, t);
                    }
                } else if meta.path == ID {
                    cx.error_spanned_by(
                        &meta.path,
                        "`id` is a field key: put #[cache(id)] on the primary-key field, not on the struct",
                    );
                    skip_value(&meta)?;
                } else {
                    unknown_key(cx, &meta.path, Place::Struct);
                    skip_value(&meta)?;
                }
                Ok(())
            },
            |meta| {
                if meta.path == RENAME_ALL {
                    let lit: LitStr = meta.value()?.parse()?;
                    rename_all = RenameRule::from_str(&lit.value());
                } else {
                    skip_value(&meta)?;
                }
                Ok(())
            },
        );

        Container {
            table: table.get(),
            prefix: prefix.get(),
            ttl: ttl.get(),
            rename_all,
        }
    }
}

/// Reads every `#[cache(...)]` of `attrs` strictly (each mistake is an
/// error in `cx`; `example` shows the list form) and every `#[sqlx(...)]`
/// leniently (sqlx reports its own syntax errors), handing each key to its
/// reader.
fn read_attrs(
    cx: &Ctxt,
    attrs: &[Attribute],
    example: &str,
    mut cache: impl FnMut(ParseNestedMeta) -> syn::Result<()>,
    mut sqlx: impl FnMut(ParseNestedMeta) -> syn::Result<()>,
) {
    for attr in attrs {
        if attr.path() == CACHE {
            if !is_list(cx, attr, example) {
                continue;
            }
            if let Err(err) = attr.parse_nested_meta(&mut cache) {
                cx.syn_error(err);
            }
        } else if attr.path() == SQLX {
            let _ = attr.parse_nested_meta(&mut sqlx);
        }
    }
}

/// The field-level keys.
pub struct Field {
    /// The `id` of `#[cache(id)]`, for spans.
    pub id: Option<Path>,
    /// The `index` of `#[cache(index)]`, for spans.
    pub index: Option<Path>,
    /// sqlx's `rename = "..."`.
    pub rename: Option<String>,
    /// sqlx's `skip`, for spans.
    pub skip: Option<Path>,
    /// sqlx's `flatten`, `json` and `try_from`, for spans: rejected.
    pub flatten: Option<Path>,
    pub json: Option<Path>,
    pub try_from: Option<Path>,
}

impl Field {
    /// Reads `#[cache(...)]` and the column keys of `#[sqlx(...)]` on a field.
    pub fn from_ast(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut id = Attr::none(cx, ID);
        let mut index = Attr::none(cx, INDEX);
        let mut rename = None;
        let mut skip = None;
        let mut flatten = None;
        let mut json = None;
        let mut try_from = None;

        read_attrs(
            cx,
            attrs,
            FIELD_EXAMPLE,
            |meta| {
                if meta.path == ID {
                    if meta.input.is_empty() || meta.input.peek(Token![,]) {
                        id.set(&meta.path, meta.path.clone());
                    } else {
                        let value = skip_value(&meta)?;
                        let path = &meta.path;
                        cx.error_spanned_by(quote!(#path #value), "`id` takes no value: write #[cache(id)]");
                    }
                } else if meta.path == INDEX {
                    if meta.input.is_empty() || meta.input.peek(Token![,]) {
                        index.set(&meta.path, meta.path.clone());
                    } else {
                        let value = skip_value(&meta)?;
                        let path = &meta.path;
                        cx.error_spanned_by(
                            quote!(#path #value),
                            "`index` takes no value: write #[cache(index)] on a unique field",
                        );
                    }
                } else if let Some(key) = CONTAINER_KEYS.iter().find(|key| meta.path == **key) {
                    cx.error_spanned_by(
                        &meta.path,
                        format!("`{key}` is a struct key: move it to #[cache({key} = ...)] above the struct"),
                    );
                    skip_value(&meta)?;
                } else {
                    unknown_key(cx, &meta.path, Place::Field);
                    skip_value(&meta)?;
                }
                Ok(())
            },
            |meta| {
                if meta.path == RENAME {
                    let lit: LitStr = meta.value()?.parse()?;
                    rename = Some(lit.value());
                } else if meta.path == SKIP {
                    skip = Some(meta.path.clone());
                } else if meta.path == FLATTEN {
                    flatten = Some(meta.path.clone());
                } else if meta.path == JSON {
                    json = Some(meta.path.clone());
                    skip_value(&meta)?;
                } else if meta.path == TRY_FROM {
                    try_from = Some(meta.path.clone());
                    skip_value(&meta)?;
                } else {
                    skip_value(&meta)?;
                }
                Ok(())
            },
        );

        Field {
            id: id.get(),
            index: index.get(),
            rename,
            skip,
            flatten,
            json,
            try_from,
        }
    }
}

const CONTAINER_EXAMPLE: &str =
    "write #[cache(table = \"users\", prefix = \"users\", ttl = 3600)] with the keys you need";
const FIELD_EXAMPLE: &str = "write #[cache(id)] to mark the primary key";

/// Rejects `#[cache]` and `#[cache = ...]`; an empty `#[cache()]` is allowed.
fn is_list(cx: &Ctxt, attr: &Attribute, example: &str) -> bool {
    match &attr.meta {
        Meta::List(_) => true,
        Meta::Path(path) => {
            cx.error_spanned_by(path, format!("#[cache] needs a list of keys: {example}"));
            false
        }
        Meta::NameValue(nv) => {
            cx.error_spanned_by(nv, format!("#[cache] needs a list of keys: {example}"));
            false
        }
    }
}

#[derive(Clone, Copy)]
enum Place {
    Struct,
    Field,
}

/// Reports an unknown key, with a suggestion when one is close.
fn unknown_key(cx: &Ctxt, path: &Path, place: Place) {
    let key = path_to_string(path);
    let message = match place {
        Place::Struct => {
            let mut message = format!("unknown key `{key}` in #[cache(...)] on a struct");
            if let Some(suggestion) = did_you_mean(&key, CONTAINER_KEYS) {
                message.push_str(&format!("; did you mean `{suggestion}`?"));
            }
            message.push_str(
                " The struct keys are `table = \"...\"`, `prefix = \"...\"` and `ttl = N`",
            );
            message
        }
        Place::Field => format!(
            "unknown key `{key}` in #[cache(...)] on a field: the field keys are `id` and `index`; write #[cache(id)] on the primary-key field, #[cache(index)] on a unique field"
        ),
    };
    cx.error_spanned_by(path, message);
}

/// The valid key closest to `key`, if it is a likely typo.
fn did_you_mean(key: &str, valid: &[Symbol]) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    valid
        .iter()
        .map(|sym| (edit_distance(&lower, sym.as_str()), sym.as_str()))
        .filter(|(d, s)| *d <= 2 && *d < s.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, s)| s)
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn path_to_string(path: &Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}

/// Consumes the value of a key whatever its form (`= expr`, `(...)` or
/// nothing) so parsing goes on with the next key. Returns the tokens read.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<TokenStream> {
    if meta.input.peek(Token![=]) {
        let eq: Token![=] = meta.input.parse()?;
        let expr: Expr = meta.input.parse()?;
        Ok(quote!(#eq #expr))
    } else if meta.input.peek(syn::token::Paren) {
        let group: proc_macro2::TokenTree = meta.input.parse()?;
        Ok(group.into_token_stream())
    } else {
        Ok(TokenStream::new())
    }
}

/// Reads the `= expr` of a key, reporting a missing `=` as a mistake of this
/// key (and going on) rather than as a syntax error.
fn parse_value(cx: &Ctxt, meta: &ParseNestedMeta, key: Symbol, example: &str) -> syn::Result<Option<Expr>> {
    if !meta.input.peek(Token![=]) {
        skip_value(meta)?;
        cx.error_spanned_by(&meta.path, format!("`{key}` needs a value: write {example}"));
        return Ok(None);
    }
    let expr: Expr = meta.value()?.parse()?;
    Ok(Some(unwrap_group(expr)))
}

/// `$value:expr` from a `macro_rules!` arrives wrapped in an invisible group.
fn unwrap_group(expr: Expr) -> Expr {
    match expr {
        Expr::Group(group) => unwrap_group(*group.expr),
        other => other,
    }
}

/// `key = "..."`: a string literal.
fn parse_lit_str(cx: &Ctxt, meta: &ParseNestedMeta, key: Symbol, sample: &str) -> syn::Result<Option<LitStr>> {
    let example = format!("{key} = \"{sample}\"");
    let Some(expr) = parse_value(cx, meta, key, &example)? else {
        return Ok(None);
    };
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Ok(Some(s)),
        other => {
            cx.error_spanned_by(other, format!("`{key}` takes a string literal: write {example}"));
            Ok(None)
        }
    }
}

/// [`MAX_TTL_SECS`] as a user would write it: `31_536_000`.
pub fn max_ttl_literal() -> String {
    grouped(MAX_TTL_SECS)
}

/// An integer literal with `_` between groups of three digits.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() * 4 / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('_');
        }
        out.push(digit);
    }
    out
}

/// `ttl = N`: an integer literal (any suffix), range-checked in `check.rs`.
fn parse_ttl(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<Ttl>> {
    let range = format!("from 1 to {} (one year)", max_ttl_literal());
    let Some(expr) = parse_value(cx, meta, TTL, "ttl = 3600")? else {
        return Ok(None);
    };
    let message = match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => {
            let seconds = int.base10_parse::<u128>().unwrap_or(u128::MAX);
            return Ok(Some(Ttl {
                seconds,
                tokens: expr.into_token_stream(),
            }));
        }
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_), ..
        }) => format!("`ttl` cannot be negative: write a number of seconds {range}, e.g. ttl = 3600"),
        Expr::Lit(ExprLit {
            lit: Lit::Float(float),
            ..
        }) => {
            let suggestion = match float.base10_parse::<f64>() {
                Ok(f) if f > 0.0 && f <= MAX_TTL_SECS as f64 => format!("ttl = {}", f.ceil()),
                _ => "ttl = 3600".to_owned(),
            };
            format!("`ttl` takes whole seconds, not a float: write e.g. {suggestion}")
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => {
            let suggestion = match s.value().trim().parse::<u64>() {
                Ok(n) => format!("ttl = {n}"),
                Err(_) => "ttl = 3600".to_owned(),
            };
            format!("`ttl` takes an integer literal, not a string: write {suggestion}")
        }
        _ => format!(
            "`ttl` takes an integer literal, not a constant or an expression: write the seconds {range}, e.g. ttl = 3600"
        ),
    };
    cx.error_spanned_by(expr, message);
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos() {
        assert_eq!(did_you_mean("tabel", CONTAINER_KEYS), Some("table"));
        assert_eq!(did_you_mean("tll", CONTAINER_KEYS), Some("ttl"));
        assert_eq!(did_you_mean("prefx", CONTAINER_KEYS), Some("prefix"));
        assert_eq!(did_you_mean("expire", CONTAINER_KEYS), None);
        assert_eq!(did_you_mean("key", CONTAINER_KEYS), None);
    }

    #[test]
    fn ttl_limit_is_written_as_a_literal() {
        assert_eq!(max_ttl_literal(), "31_536_000");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1_000");
        assert_eq!(grouped(123_456), "123_456");
        assert_eq!(grouped(u64::MAX), "18_446_744_073_709_551_615");
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("table", "table"), 0);
        assert_eq!(edit_distance("tabel", "table"), 2);
        assert_eq!(edit_distance("prefixx", "prefix"), 1);
    }
}
