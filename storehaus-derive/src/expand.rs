//! The generated code: `impl Cached`, the SQLite binder, `cache_key` and the
//! trait checks.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, ToTokens};
use syn::DeriveInput;

use crate::ast::Container;
use crate::check;
use crate::ctxt::Ctxt;
use crate::fallback;
use crate::fingerprint::{fingerprint, normalized};
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

/// The hidden module of the facade that generated code refers to.
pub fn private() -> TokenStream {
    quote!(::storehaus::__private)
}

fn impl_cached(cont: &Container) -> syn::Result<TokenStream> {
    let p = private();
    let ident = cont.ident;
    let Some(id) = cont.id_field() else {
        return Err(syn::Error::new_spanned(ident, "no primary key"));
    };
    let id_member = id.ident;
    let id_ty = id.ty;

    let columns: Vec<_> = cont.columns().collect();
    let Some(id_index) = columns.iter().position(|(field, _)| std::ptr::eq(*field, id)) else {
        return Err(syn::Error::new_spanned(id.ident, "the primary key must be a column"));
    };
    let names: Vec<&str> = columns.iter().map(|(_, name)| *name).collect();
    let id_column = names[id_index];
    let values: Vec<_> = columns
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != id_index)
        .map(|(_, (field, _))| field.ident)
        .collect();

    let table = cont.table();
    let prefix = cont.prefix();
    let ttl = match &cont.attrs.ttl {
        // Range-checked: 1 ..= one year.
        Some(ttl) => {
            let seconds = Literal::u64_suffixed(u64::try_from(ttl.seconds).unwrap_or(u64::MAX));
            quote!(::core::option::Option::Some(#seconds))
        }
        None => quote!(::core::option::Option::None),
    };
    let fingerprint = Literal::u64_suffixed(fingerprint(cont));
    let pg = statements(&sql::statements(Dialect::Postgres, &table, &names, id_index));
    let sqlite = statements(&sql::statements(Dialect::Sqlite, &table, &names, id_index));
    // Every value type is bounded by `ColumnBounds` (see `bounds`), so these
    // never fail: a bad column type is reported once, by `asserts`.
    let binds = values.iter().map(|field| quote!(.bind(&self.#field)));
    // The same bounds on the SQLite binder, so a bad column type is not
    // reported again from inside `impl_bind_sqlite!`.
    let value_types = column_types(cont, false);

    let id_tokens = quote!(#id_ty);
    let bounds = bounds(cont, Some(&id_tokens));
    let cache_key = cache_key(cont, &id_tokens, &prefix, &table);
    let column_handles = self::columns(cont);
    let asserts = asserts(cont, Some(&id_tokens), true);

    Ok(quote! {
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
        }

        #p::impl_bind_sqlite!(#ident; #(#values),*; where #(for<'__storehaus> #value_types: #p::ColumnBounds,)*);

        #cache_key

        #column_handles

        #asserts
    })
}

/// The types of the columns (without repeats), with or without the id.
fn column_types<'c>(cont: &'c Container, with_id: bool) -> Vec<&'c syn::Type> {
    let id = cont.id_field();
    let mut seen = Vec::new();
    let mut types = Vec::new();
    for (field, _) in cont.columns() {
        if !with_id && id.is_some_and(|id| std::ptr::eq(id, field)) {
            continue;
        }
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
/// with a message saying what to write, by [`asserts`]; as `for<'_>` bounds
/// rustc does not check them again on the impl itself (they are only checked
/// where the impl is used), so one mistake makes one error. `id_ty` is
/// `None` when the id is unknown (fallback).
pub fn bounds(cont: &Container, id_ty: Option<&TokenStream>) -> TokenStream {
    let p = private();
    let ident = cont.ident;
    let id_bound = id_ty.map(|ty| quote!(for<'__storehaus> #ty: #p::CacheId,));
    let columns = column_types(cont, false);
    quote! {
        where
            for<'__storehaus> #ident: #p::CachedBounds,
            #id_bound
            #(for<'__storehaus> #columns: #p::ColumnBounds,)*
    }
}

/// One check per thing the user must provide. Each helper trait has an
/// `on_unimplemented` message and two candidate impls, so rustc reports the
/// helper (not the nested bound) once, at the struct's name, the id's type
/// or the column's type. The `FromRow` check assumes the column types are
/// fine: a bad column is reported by its own check, not as a missing
/// `FromRow`. The fallback passes `check_columns = false`: a field the
/// derive rejected already has its error.
pub fn asserts(cont: &Container, id_ty: Option<&TokenStream>, check_columns: bool) -> TokenStream {
    let p = private();
    let ident = cont.ident;
    let checks = ["AssertClone", "AssertSerialize", "AssertDeserialize"]
        .iter()
        .map(|name| {
            let helper = syn::Ident::new(name, Span::call_site());
            quote!(<#ident as #p::#helper<_>>::check();)
        });
    let id_check = id_ty.map(|ty| quote!(<#ty as #p::AssertCacheId<_>>::check();));
    let values = if check_columns {
        column_types(cont, false)
    } else {
        Vec::new()
    };
    let all = column_types(cont, true);
    quote! {
        const _: () = {
            #[allow(dead_code)]
            fn __storehaus_assert_traits() {
                #(#checks)*
                #id_check
                #(<#values as #p::AssertColumn<_>>::check();)*
            }

            #[allow(dead_code)]
            fn __storehaus_assert_from_row()
            where
                #(for<'__storehaus> #all: #p::ColumnBounds,)*
            {
                <#ident as #p::AssertFromRow<_>>::check();
            }
        };
    }
}

/// `User::cache_key(global_prefix, &id)`, with rustdoc.
pub fn cache_key(cont: &Container, id_ty: &TokenStream, prefix: &str, table: &str) -> TokenStream {
    let p = private();
    let ident = cont.ident;
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

/// `User::columns()`: typed `Column` handles for `storehaus::Query`, in a
/// `UserColumns` struct with one field per column.
pub fn columns(cont: &Container) -> TokenStream {
    let p = private();
    let ident = cont.ident;
    let vis = &cont.original.vis;
    let handles = syn::Ident::new(&format!("{}Columns", crate::case::unraw(ident)), ident.span());
    let struct_doc = format!(
        " Typed handles on the columns of [`{ident}`], from [`{ident}::columns`], for \
         building `storehaus::Query` filters and orderings. Generated by `#[derive(Cached)]`."
    );
    let fn_doc = format!(" The typed column handles of `{ident}`: `{ident}::columns().<field>`.");
    let (fields, inits): (Vec<_>, Vec<_>) = cont
        .columns()
        .map(|(field, column)| {
            let member = field.ident;
            let ty = field.ty;
            let doc = format!(" The `{column}` column.");
            (
                quote! {
                    #[doc = #doc]
                    pub #member: #p::Column<#ident, #ty>,
                },
                quote!(#member: #p::Column::new(#column),),
            )
        })
        .unzip();
    quote! {
        #[doc = #struct_doc]
        #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug)]
        #[automatically_derived]
        #vis struct #handles {
            #(#fields)*
        }

        #[automatically_derived]
        impl #ident {
            #[doc = #fn_doc]
            #[must_use]
            #vis const fn columns() -> #handles {
                #handles {
                    #(#inits)*
                }
            }
        }
    }
}

fn statements(s: &sql::Statements) -> TokenStream {
    let p = private();
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
