//! The trait checks emitted beside the impl: one item per thing the user must
//! provide (`Clone`, `Serialize`, `Deserialize`, `FromRow`, a `CacheId` id,
//! column types sqlx can read and write), each reported once with a message
//! saying what to write. The helper traits live in the runtime's `assert.rs`.

use proc_macro2::{Span, TokenStream};
use quote::quote;

use crate::ast::Container;
use crate::bound;
use crate::private;

/// Every check, the value columns' types included: what a successful derive
/// emits.
pub fn traits_and_columns(cont: &Container, id_ty: Option<&TokenStream>) -> TokenStream {
    checks(cont, id_ty, &bound::value_types(cont))
}

/// Every check but the value columns' types: what the fallback emits, since
/// a field the derive rejected already has its error.
pub fn traits_only(cont: &Container, id_ty: Option<&TokenStream>) -> TokenStream {
    checks(cont, id_ty, &[])
}

/// Each helper trait has an `on_unimplemented` message and two candidate
/// impls, so rustc reports the helper (not the nested bound) once, at the
/// struct's name, the id's type or the column's type. The `FromRow` check
/// assumes the column types are fine: a bad column is reported by its own
/// check, not as a missing `FromRow`. `id_ty` is `None` when the id is
/// unknown (fallback).
fn checks(cont: &Container, id_ty: Option<&TokenStream>, values: &[&syn::Type]) -> TokenStream {
    let p = private::path();
    let ident = cont.ident;
    let checks = ["AssertClone", "AssertSerialize", "AssertDeserialize"]
        .iter()
        .map(|name| {
            let helper = syn::Ident::new(name, Span::call_site());
            quote!(<#ident as #p::#helper<_>>::check();)
        });
    let id_check = id_ty.map(|ty| quote!(<#ty as #p::AssertCacheId<_>>::check();));
    let all = bound::column_types(cont);
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
