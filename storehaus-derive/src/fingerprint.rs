//! The schema fingerprint: a 64-bit FNV-1a hash, computed at compile time, of
//! everything that decides the cached bytes of a record.
//!
//! It covers the table, then for every field in order (skipped ones too: serde
//! still writes them) its name, its column and its type, and every
//! `#[serde(...)]` attribute. Types are hashed as normalized token strings,
//! so the result does not depend on how the compiler prints tokens.

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;

use crate::ast::Container;
use crate::symbol::SERDE;

/// FNV-1a, 64 bits.
pub struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;

    pub fn new() -> Self {
        Fnv1a(Self::OFFSET)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// Writes a string and a separator, so `("ab", "c")` and `("a", "bc")`
    /// differ.
    pub fn write_str(&mut self, s: &str) {
        self.write(s.as_bytes());
        self.write(&[0xff]);
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// The fingerprint of a record.
pub fn fingerprint(cont: &Container) -> u64 {
    let mut hash = Fnv1a::new();
    hash.write_str("storehaus:1");
    hash.write_str(&cont.table());
    for attr in cont.original.attrs.iter().filter(|a| a.path() == SERDE) {
        hash.write_str(&normalized(attr.to_token_stream()));
    }
    for field in &cont.fields {
        hash.write_str(&crate::case::unraw(field.ident));
        hash.write_str(field.column.as_deref().unwrap_or("\0skip"));
        hash.write_str(&normalized(field.ty.to_token_stream()));
        for attr in field.original.attrs.iter().filter(|a| a.path() == SERDE) {
            hash.write_str(&normalized(attr.to_token_stream()));
        }
    }
    hash.finish()
}

/// Tokens as a string with exactly one space between tokens, whatever the
/// spacing of the source or the compiler's printer.
pub fn normalized(tokens: TokenStream) -> String {
    let mut out = String::new();
    push_tokens(&mut out, tokens);
    out
}

fn push_tokens(out: &mut String, tokens: TokenStream) {
    for tt in tokens {
        if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
        match tt {
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                push_tokens(out, group.stream());
                if !close.is_empty() {
                    if !out.ends_with(' ') {
                        out.push(' ');
                    }
                    out.push_str(close);
                }
            }
            TokenTree::Ident(ident) => out.push_str(&ident.to_string()),
            TokenTree::Punct(punct) => out.push(punct.as_char()),
            TokenTree::Literal(lit) => out.push_str(&lit.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        let mut h = Fnv1a::new();
        assert_eq!(h.finish(), 0xcbf2_9ce4_8422_2325);
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv1a::new();
        h.write(b"foobar");
        assert_eq!(h.finish(), 0x85944171f73967e8);
    }

    #[test]
    fn normalized_ignores_source_spacing() {
        let a: TokenStream = "Option<Vec<u8>>".parse().unwrap();
        let b: TokenStream = "Option < Vec < u8 > >".parse().unwrap();
        assert_eq!(normalized(a.clone()), normalized(b));
        assert_eq!(normalized(a), "Option < Vec < u8 > >");
        assert_eq!(normalized(quote!(::uuid::Uuid)), ": : uuid : : Uuid");
        assert_eq!(normalized(quote!([u8; 16])), "[ u8 ; 16 ]");
    }

    #[test]
    fn fingerprint_covers_names_types_order_and_table() {
        fn fp(src: &str) -> u64 {
            let input: syn::DeriveInput = syn::parse_str(src).unwrap();
            let cx = crate::ctxt::Ctxt::new();
            let cont = Container::from_ast(&cx, &input).unwrap();
            cx.check().unwrap();
            fingerprint(&cont)
        }
        let base = fp("struct U { id: i64, name: String }");
        assert_eq!(base, fp("struct U { id : i64 , name : String }"));
        assert_ne!(base, fp("struct U { name: String, id: i64 }"));
        assert_ne!(base, fp("struct U { id: i32, name: String }"));
        assert_ne!(base, fp("struct U { id: i64, nom: String }"));
        assert_ne!(base, fp("#[cache(table = \"t\")] struct U { id: i64, name: String }"));
        assert_ne!(base, fp("struct U { id: i64, #[sqlx(rename = \"n\")] name: String }"));
        assert_ne!(base, fp("struct U { id: i64, #[serde(skip)] name: String }"));
    }
}
