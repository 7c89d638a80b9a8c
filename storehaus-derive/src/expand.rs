//! The generated code: `impl Cached`, the SQLite binder, `cache_key` and the
//! trait checks.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::DeriveInput;

use crate::ast::Container;
use crate::check;
use crate::ctxt::Ctxt;
use crate::fallback;
use crate::fingerprint::fingerprint;
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
            let seconds = Literal::u64_suffixed(ttl.seconds as u64);
            quote!(::core::option::Option::Some(#seconds))
        }
        None => quote!(::core::option::Option::None),
    };
    let fingerprint = Literal::u64_suffixed(fingerprint(cont));
    let pg = statements(&sql::statements(Dialect::Postgres, &table, &names, id_index));
    let sqlite = statements(&sql::statements(Dialect::Sqlite, &table, &names, id_index));
    // Spanned on the field, so an unbindable type points at its field.
    let binds = values
        .iter()
        .map(|field| quote_spanned!(field.span()=> .bind(&self.#field)));

    let bounds = bounds(cont);
    let cache_key = cache_key(cont, quote!(#id_ty), &prefix, &table);
    let asserts = asserts(cont);

    Ok(quote! {
        #[automatically_derived]
        impl #p::Cached for #ident #bounds {
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

        #p::impl_bind_sqlite!(#ident; #(#values),*);

        #cache_key

        #asserts
    })
}

/// The supertraits of `Cached` that the user derives, as a where clause. A
/// missing one is reported once by [`asserts`], with a message saying what to
/// derive; the `for<'_>` keeps rustc from also rejecting the impl itself
/// (trivial bounds are only checked where the impl is used).
pub fn bounds(cont: &Container) -> TokenStream {
    let p = private();
    let ident = cont.ident;
    quote!(where for<'__storehaus> #ident: #p::CachedBounds)
}

/// One check per trait the user must derive. Each helper trait has an
/// `on_unimplemented` message and two candidate impls, so rustc reports the
/// helper (not the nested bound) once, at the struct's name.
pub fn asserts(cont: &Container) -> TokenStream {
    let p = private();
    let ident = cont.ident;
    let checks = ["AssertClone", "AssertSerialize", "AssertDeserialize", "AssertFromRow"]
        .iter()
        .map(|name| {
            let helper = syn::Ident::new(name, Span::call_site());
            quote!(<#ident as #p::#helper<_>>::check();)
        });
    quote! {
        const _: () = {
            #[allow(dead_code)]
            fn __storehaus_assert_derives() {
                #(#checks)*
            }
        };
    }
}

/// `User::cache_key(global_prefix, &id)`, with rustdoc.
pub fn cache_key(cont: &Container, id_ty: TokenStream, prefix: &str, table: &str) -> TokenStream {
    let p = private();
    let ident = cont.ident;
    let summary = format!(
        " The cache key of the `{ident}` record with this id: `{{global_prefix}}:{prefix}:{{id}}`."
    );
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
                #p::record_key(global_prefix, #prefix, id)
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
