//! What a failed derive still emits besides its errors (thiserror's idea): a
//! `Cached` impl and a `cache_key` whose signatures are right, so code that
//! uses the record does not pile more errors on the real ones.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};

use crate::assert;
use crate::ast::Container;
use crate::bound;
use crate::handles;
use crate::private;

/// The errors, plus the fallback items when the input is a struct the derive
/// could read (for an enum or a generic struct there is nothing sensible to
/// emit).
pub fn expand(cont: Option<&Container>, error: syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    let Some(cont) = cont else {
        return error;
    };
    let p = private::path();
    let ident = cont.ident;
    let id_ty = cont.id_field().map(|field| field.ty.to_token_stream());
    let cached = cached_impl(cont, id_ty.as_ref());
    let cache_key = cache_key(id_ty.as_ref());
    let handles = handles::expand(cont);
    let asserts = assert::traits_only(cont, id_ty.as_ref());

    quote! {
        #error

        #cached

        #p::impl_bind_sqlite!(#ident;);

        #[automatically_derived]
        impl #ident {
            #cache_key
        }

        #handles

        #asserts
    }
}

/// `impl Cached` with the right bounds and id type and empty constants. With
/// no known id, the id type is `i64`.
fn cached_impl(cont: &Container, id_ty: Option<&TokenStream>) -> TokenStream {
    let p = private::path();
    let ident = cont.ident;
    let id_type = match id_ty {
        Some(ty) => ty.clone(),
        None => quote!(::core::primitive::i64),
    };
    let bounds = bound::where_clause(cont, id_ty);
    let empty = quote! {
        #p::Statements {
            select_by_id: "",
            select_many: "",
            insert: "",
            update: "",
            delete: "",
            delete_many: "",
            select_all: "",
        }
    };
    quote! {
        #[automatically_derived]
        impl #p::Cached for #ident
        #bounds
        {
            type Id = #id_type;
            const TABLE: &'static ::core::primitive::str = "";
            const PREFIX: &'static ::core::primitive::str = "";
            const TTL: ::core::option::Option<::core::primitive::u64> = ::core::option::Option::None;
            const COLUMNS: &'static [&'static ::core::primitive::str] = &[];
            const ID_COLUMN: &'static ::core::primitive::str = "";
            const FINGERPRINT: ::core::primitive::u64 = 0;
            const PG: #p::Statements = #empty;
            const SQLITE: #p::Statements = #empty;

            fn id(&self) -> &Self::Id {
                ::core::unreachable!()
            }

            fn bind_values<'q>(&'q self, _query: #p::PgQuery<'q>) -> #p::PgQuery<'q> {
                ::core::unreachable!()
            }
        }
    }
}

/// A `cache_key` with the real signature; with no known id it takes any id,
/// so no call of it adds an error.
fn cache_key(id_ty: Option<&TokenStream>) -> TokenStream {
    match id_ty {
        Some(ty) => quote! {
            #[allow(missing_docs)]
            pub fn cache_key(_global_prefix: &::core::primitive::str, _id: &#ty) -> ::std::string::String {
                ::core::unreachable!()
            }
        },
        None => quote! {
            #[allow(missing_docs)]
            pub fn cache_key<I: ?::core::marker::Sized>(_global_prefix: &::core::primitive::str, _id: &I) -> ::std::string::String {
                ::core::unreachable!()
            }
        },
    }
}
