//! The where clause of the generated impls (serde_derive's `bound.rs`): which
//! types must implement which StoreHaus trait, shared by the real impl
//! (`expand`), the fallback impl (`fallback`) and the trait checks (`assert`).

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};

use crate::ast::{Container, Field};
use crate::fingerprint::normalized;
use crate::private;

/// The types of every column, the id's included, without repeats.
pub fn column_types<'c>(cont: &'c Container) -> Vec<&'c syn::Type> {
    distinct_types(cont.columns().map(|(field, _)| field))
}

/// The types of the value columns (every column but the id), without
/// repeats: the types the store binds as values.
pub fn value_types<'c>(cont: &'c Container) -> Vec<&'c syn::Type> {
    let id = cont.id_field();
    distinct_types(
        cont.columns()
            .map(|(field, _)| field)
            .filter(|field| !id.is_some_and(|id| std::ptr::eq(id, *field))),
    )
}

/// The fields' types in order, each written once (compared as normalized
/// tokens, so `Option<i64>` and `Option < i64 >` are one type).
fn distinct_types<'c>(fields: impl Iterator<Item = &'c Field<'c>>) -> Vec<&'c syn::Type> {
    let mut seen = Vec::new();
    let mut types = Vec::new();
    for field in fields {
        let key = normalized(field.ty.to_token_stream());
        if !seen.contains(&key) {
            seen.push(key);
            types.push(field.ty);
        }
    }
    types
}

/// The bounds of the `Cached` impl: the supertraits the user derives,
/// `Id: CacheId` and a column bound per value type. Each one is checked,
/// with a message saying what to write, by the items of `assert`; as
/// `for<'_>` bounds rustc does not check them again on the impl itself (they
/// are only checked where the impl is used), so one mistake makes one error.
/// `id_ty` is `None` when the id is unknown (fallback).
pub fn where_clause(cont: &Container, id_ty: Option<&TokenStream>) -> TokenStream {
    let p = private::path();
    let ident = cont.ident;
    let id_bound = id_ty.map(|ty| quote!(for<'__storehaus> #ty: #p::CacheId,));
    let columns = value_types(cont);
    quote! {
        where
            for<'__storehaus> #ident: #p::CachedBounds,
            #id_bound
            #(for<'__storehaus> #columns: #p::ColumnBounds,)*
    }
}
