//! How a backend reports what the server says about keys this process holds
//! (client-side caching, `CLIENT TRACKING`): through a listener the cache
//! installs, so a backend never reaches up into the cache that uses it.

/// Receives a tracking connection's news. Implemented by the near cache.
pub(crate) trait KeyListener: Send + Sync + 'static {
    /// The server says `key` changed: what was read of it before now is
    /// not to be served.
    fn invalidate(&self, key: &str);
    /// Anything may have changed (a lost connection, a failover, a server
    /// flush, a message that could not be read).
    fn flush(&self);
    /// Whether the server's news reaches the listener now (a tracking
    /// connection is up). While it is not, nothing held may be served.
    fn set_live(&self, live: bool);
    /// Whether it is live (what [`set_live`](Self::set_live) said last).
    fn is_live(&self) -> bool;
}
