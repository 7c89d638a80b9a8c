//! Rendering a [`Query`] for one dialect: the SQL text with its
//! placeholders, the values in placeholder order, and a collision-resistant
//! hash of both that keys the cached result.

use std::sync::Arc;

use super::{Node, Order, Query, SqlValue};
use crate::error::{Result, StorehausError};
use crate::record::Cached;

/// A SQL dialect's placeholder style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Sqlite,
}

/// What a query selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Select {
    Rows,
    Count,
}

/// A query rendered for one dialect: SQL text, its values in placeholder
/// order, and a stable hash of both for the result's cache key.
pub(crate) struct Rendered {
    pub sql: String,
    pub values: Vec<Arc<dyn SqlValue>>,
}

impl Rendered {
    /// A stable hex SHA-256 of `layout` (the value layout of the results:
    /// see `cache::versions`), the SQL and the encoded values. Filter values
    /// come from users, so the hash must be collision-resistant: two queries
    /// sharing a key would serve each other's rows.
    pub fn hash(&self, layout: &str) -> String {
        use sha2::{Digest, Sha256};
        use std::fmt::Write;
        let mut bytes = Vec::with_capacity(layout.len() + 9 + self.sql.len() + 16 * self.values.len());
        bytes.extend_from_slice(&(layout.len() as u64).to_le_bytes());
        bytes.extend_from_slice(layout.as_bytes());
        bytes.extend_from_slice(self.sql.as_bytes());
        let mut value = Vec::new();
        for v in &self.values {
            // Length-prefixed, so no two value lists encode alike.
            value.clear();
            v.key_bytes(&mut value);
            bytes.extend_from_slice(&(value.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&value);
        }
        let digest = Sha256::digest(&bytes);
        let mut hex = String::with_capacity(64);
        for b in digest {
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }
}

pub(super) struct SqlBuilder {
    dialect: Dialect,
    pub(super) sql: String,
    values: Vec<Arc<dyn SqlValue>>,
    error: Option<String>,
}

/// Appends `ident` as a quoted SQL identifier (`"` doubled).
pub(crate) fn quote_ident(out: &mut String, ident: &str) {
    out.push('"');
    for c in ident.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

impl SqlBuilder {
    pub(super) fn new(dialect: Dialect) -> Self {
        SqlBuilder {
            dialect,
            sql: String::new(),
            values: Vec::new(),
            error: None,
        }
    }

    fn placeholder(&mut self, value: Arc<dyn SqlValue>) {
        self.values.push(value);
        let n = self.values.len();
        let mark = match self.dialect {
            Dialect::Postgres => '$',
            Dialect::Sqlite => '?',
        };
        self.sql.push(mark);
        self.sql.push_str(&n.to_string());
    }

    pub(super) fn node(&mut self, node: &Node) {
        match node {
            Node::Cmp { column, op, value } => {
                quote_ident(&mut self.sql, column);
                self.sql.push(' ');
                self.sql.push_str(op);
                self.sql.push(' ');
                self.placeholder(value.clone());
            }
            Node::In { column, values } => {
                if values.is_empty() {
                    self.error = Some(format!("the `in` list for column {column:?} is empty"));
                    self.sql.push_str("FALSE");
                    return;
                }
                quote_ident(&mut self.sql, column);
                self.sql.push_str(" IN (");
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        self.sql.push_str(", ");
                    }
                    self.placeholder(v.clone());
                }
                self.sql.push(')');
            }
            Node::Null { column, negated } => {
                quote_ident(&mut self.sql, column);
                self.sql.push_str(if *negated { " IS NOT NULL" } else { " IS NULL" });
            }
            Node::And(nodes) | Node::Or(nodes) => {
                let joiner = if matches!(node, Node::And(_)) { " AND " } else { " OR " };
                self.sql.push('(');
                for (i, n) in nodes.iter().enumerate() {
                    if i > 0 {
                        self.sql.push_str(joiner);
                    }
                    self.node(n);
                }
                self.sql.push(')');
            }
        }
    }
}

impl<T: Cached> Query<T> {
    /// Renders the query for `dialect`.
    pub(crate) fn render(&self, dialect: Dialect, select: Select) -> Result<Rendered> {
        let mut b = SqlBuilder::new(dialect);
        match select {
            Select::Rows => {
                b.sql.push_str(match dialect {
                    Dialect::Postgres => T::PG.select_all,
                    Dialect::Sqlite => T::SQLITE.select_all,
                });
            }
            Select::Count => {
                b.sql.push_str("SELECT COUNT(*) FROM ");
                quote_ident(&mut b.sql, T::TABLE);
            }
        }
        if let Some(filter) = &self.filter {
            b.sql.push_str(" WHERE ");
            b.node(&filter.node);
        }
        if let Some(error) = b.error {
            return Err(StorehausError::InvalidQuery(error));
        }
        if select == Select::Count {
            return Ok(Rendered {
                sql: b.sql,
                values: b.values,
            });
        }
        if !self.order.is_empty() {
            b.sql.push_str(" ORDER BY ");
            for (i, (column, order)) in self.order.iter().enumerate() {
                if i > 0 {
                    b.sql.push_str(", ");
                }
                quote_ident(&mut b.sql, column);
                b.sql.push_str(if *order == Order::Asc { " ASC" } else { " DESC" });
            }
        }
        match (self.limit, self.offset, dialect) {
            (None, Some(_), Dialect::Sqlite) => b.sql.push_str(" LIMIT -1"),
            (Some(n), _, _) => {
                b.sql.push_str(" LIMIT ");
                b.placeholder(Arc::new(n));
            }
            _ => {}
        }
        if let Some(n) = self.offset {
            b.sql.push_str(" OFFSET ");
            b.placeholder(Arc::new(n));
        }
        Ok(Rendered {
            sql: b.sql,
            values: b.values,
        })
    }

    /// The same query, limited to one row.
    pub(crate) fn first(&self) -> Self {
        let mut q = self.clone();
        q.limit = Some(1);
        q
    }
}
