//! Case conversions, identical to sqlx's `#[sqlx(rename_all = "...")]` (both
//! use `heck`), so the columns StoreHaus writes are the columns `FromRow`
//! reads.

use heck::{ToKebabCase, ToLowerCamelCase, ToShoutySnakeCase, ToSnakeCase, ToUpperCamelCase};

/// A `rename_all` rule of sqlx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameRule {
    Lower,
    Snake,
    Upper,
    ScreamingSnake,
    Kebab,
    Camel,
    Pascal,
}

impl RenameRule {
    /// The rule named `name` exactly as sqlx spells it, if any.
    pub fn from_str(name: &str) -> Option<Self> {
        Some(match name {
            "lowercase" => RenameRule::Lower,
            "snake_case" => RenameRule::Snake,
            "UPPERCASE" => RenameRule::Upper,
            "SCREAMING_SNAKE_CASE" => RenameRule::ScreamingSnake,
            "kebab-case" => RenameRule::Kebab,
            "camelCase" => RenameRule::Camel,
            "PascalCase" => RenameRule::Pascal,
            _ => return None,
        })
    }

    /// Applies the rule to a field name.
    pub fn apply(self, name: &str) -> String {
        match self {
            RenameRule::Lower => name.to_lowercase(),
            RenameRule::Snake => name.to_snake_case(),
            RenameRule::Upper => name.to_uppercase(),
            RenameRule::ScreamingSnake => name.to_shouty_snake_case(),
            RenameRule::Kebab => name.to_kebab_case(),
            RenameRule::Camel => name.to_lower_camel_case(),
            RenameRule::Pascal => name.to_upper_camel_case(),
        }
    }
}

/// The default table of a struct: its name in snake_case (`UserProfile` ->
/// `user_profile`).
pub fn snake_case(name: &str) -> String {
    name.to_snake_case()
}

/// An identifier as written, without the `r#` of a raw identifier (what sqlx
/// uses as the column name).
pub fn unraw(ident: &proc_macro2::Ident) -> String {
    let s = ident.to_string();
    match s.strip_prefix("r#") {
        Some(rest) => rest.to_owned(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_names_become_snake_case() {
        assert_eq!(snake_case("User"), "user");
        assert_eq!(snake_case("UserProfile"), "user_profile");
        assert_eq!(snake_case("HTTPRequest"), "http_request");
        assert_eq!(snake_case("Order2Item"), "order2_item");
    }

    #[test]
    fn rename_all_matches_sqlx() {
        let f = "created_at";
        assert_eq!(RenameRule::from_str("camelCase").unwrap().apply(f), "createdAt");
        assert_eq!(RenameRule::from_str("PascalCase").unwrap().apply(f), "CreatedAt");
        assert_eq!(
            RenameRule::from_str("SCREAMING_SNAKE_CASE").unwrap().apply(f),
            "CREATED_AT"
        );
        assert_eq!(RenameRule::from_str("kebab-case").unwrap().apply(f), "created-at");
        assert_eq!(RenameRule::from_str("UPPERCASE").unwrap().apply(f), "CREATED_AT");
        assert_eq!(
            RenameRule::from_str("lowercase").unwrap().apply("createdAt"),
            "createdat"
        );
        assert_eq!(
            RenameRule::from_str("snake_case").unwrap().apply("createdAt"),
            "created_at"
        );
        assert_eq!(RenameRule::from_str("Snake"), None);
    }

    #[test]
    fn raw_identifiers_lose_their_prefix() {
        let ident = proc_macro2::Ident::new_raw("type", proc_macro2::Span::call_site());
        assert_eq!(unraw(&ident), "type");
    }
}
