//! What a [`CacheError`](crate::CacheError) carries besides its kind: the
//! words, the typed kind of a server's error reply, and the error that
//! caused it (a redis-rs error, an I/O error, a decode error), so that
//! `std::error::Error::source` leads to it.

use std::fmt;
use std::sync::Arc;

/// The kind of an error reply from the cache server, from its error code
/// (`OOM ...`, `WRONGTYPE ...`), so callers match on a type instead of on
/// the first word of a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerErrorKind {
    /// `OOM`: the server is at `maxmemory` and refuses writes (`noeviction`).
    OutOfMemory,
    /// `WRONGTYPE`: the key holds another data type than the command needs.
    WrongType,
    /// `READONLY`: the node is a replica (a primary demoted by a failover).
    ReadOnly,
    /// `NOPERM`: the ACL user may not run this command or touch this key.
    NoPermission,
    /// `NOAUTH` / `WRONGPASS`: not authenticated, or the credentials were refused.
    Authentication,
    /// `NOSCRIPT`: the script is not in the server's script cache.
    NoScript,
    /// `LOADING`: the server is loading its dataset.
    Loading,
    /// `BUSY`: a script or function is running and blocks the server.
    Busy,
    /// `MOVED` / `ASK`: the key's slot is served by another cluster node.
    Redirected,
    /// `TRYAGAIN`: a multi-key command met a slot being migrated.
    TryAgain,
    /// `CLUSTERDOWN`: the cluster cannot serve the slot.
    ClusterDown,
    /// `MASTERDOWN`: the replica lost its primary.
    MasterDown,
    /// `CROSSSLOT`: the keys of one command are in different slots.
    CrossSlot,
    /// `EXECABORT`: a transaction was discarded.
    ExecAbort,
    /// `ERR`: a generic error (bad arguments, an out-of-range database
    /// index, a failed script, ...); the message says which.
    Generic,
    /// Any other code, as the server sent it.
    Other(String),
}

impl ServerErrorKind {
    /// The kind of an error reply whose code (its first word) is `code`.
    pub fn from_code(code: &str) -> ServerErrorKind {
        match code {
            "OOM" => ServerErrorKind::OutOfMemory,
            "WRONGTYPE" => ServerErrorKind::WrongType,
            "READONLY" => ServerErrorKind::ReadOnly,
            "NOPERM" => ServerErrorKind::NoPermission,
            "NOAUTH" | "WRONGPASS" => ServerErrorKind::Authentication,
            "NOSCRIPT" => ServerErrorKind::NoScript,
            "LOADING" => ServerErrorKind::Loading,
            "BUSY" => ServerErrorKind::Busy,
            "MOVED" | "ASK" => ServerErrorKind::Redirected,
            "TRYAGAIN" => ServerErrorKind::TryAgain,
            "CLUSTERDOWN" => ServerErrorKind::ClusterDown,
            "MASTERDOWN" => ServerErrorKind::MasterDown,
            "CROSSSLOT" => ServerErrorKind::CrossSlot,
            "EXECABORT" => ServerErrorKind::ExecAbort,
            "ERR" => ServerErrorKind::Generic,
            other => ServerErrorKind::Other(other.to_string()),
        }
    }
}

/// The details of a [`CacheError`](crate::CacheError): a message for
/// people, the [`ServerErrorKind`] when the server answered with an error,
/// and the underlying error (returned by `std::error::Error::source` of the
/// `CacheError`; for Redis failures a `redis::RedisError`).
///
/// Displays as its message. Built from a `String` or `&str` with `.into()`
/// for errors of StoreHaus's own making.
#[derive(Debug, Clone)]
pub struct ErrorDetail {
    message: String,
    server: Option<ServerErrorKind>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl ErrorDetail {
    /// A message without an underlying error.
    pub fn new(message: impl Into<String>) -> ErrorDetail {
        ErrorDetail {
            message: message.into(),
            server: None,
            source: None,
        }
    }

    /// A message with the error that caused it.
    pub fn with_source(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        ErrorDetail {
            message: message.into(),
            server: None,
            source: Some(Arc::new(source)),
        }
    }

    /// The same detail, marked as the server's error reply of `kind`.
    pub fn with_server_kind(mut self, kind: ServerErrorKind) -> ErrorDetail {
        self.server = Some(kind);
        self
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The kind of the server's error reply, when the server answered with one.
    pub fn server_kind(&self) -> Option<&ServerErrorKind> {
        self.server.as_ref()
    }

    /// The underlying error, if any.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }

    /// A redis-rs error: its text, its server code as a kind, itself as the source.
    #[cfg(feature = "redis")]
    pub(crate) fn redis(err: redis::RedisError) -> ErrorDetail {
        let kind = err.code().map(ServerErrorKind::from_code);
        ErrorDetail {
            message: err.to_string(),
            server: kind,
            source: Some(Arc::new(err)),
        }
    }

    /// The same detail with `context: ` before its message.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn context(mut self, context: &str) -> ErrorDetail {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for ErrorDetail {
    fn from(message: String) -> Self {
        ErrorDetail::new(message)
    }
}

impl From<&str> for ErrorDetail {
    fn from(message: &str) -> Self {
        ErrorDetail::new(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_become_kinds() {
        assert_eq!(ServerErrorKind::from_code("OOM"), ServerErrorKind::OutOfMemory);
        assert_eq!(ServerErrorKind::from_code("WRONGTYPE"), ServerErrorKind::WrongType);
        assert_eq!(ServerErrorKind::from_code("ERR"), ServerErrorKind::Generic);
        assert_eq!(
            ServerErrorKind::from_code("NEWCODE"),
            ServerErrorKind::Other("NEWCODE".into())
        );
    }

    #[test]
    #[cfg(feature = "redis")]
    fn a_redis_error_keeps_its_code_and_is_the_source() {
        let err = redis::RedisError::from((redis::ErrorKind::Io, "boom"));
        let detail = ErrorDetail::redis(err);
        assert_eq!(detail.server_kind(), None);
        let source = detail.source().expect("the redis error is kept");
        assert!(source.downcast_ref::<redis::RedisError>().is_some());
    }
}
