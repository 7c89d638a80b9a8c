//! The seeds of a cluster connection: the URL of each node, with the
//! scheme and credentials of the cache URL.

use crate::config::redact_url;
use crate::error::{CacheError, CacheResult};

/// A seed's URL: a full URL as given, or `host:port` with the scheme and
/// credentials of the main URL.
pub(crate) fn seed_url(base: &str, node: &str) -> CacheResult<String> {
    if node.contains("://") {
        return Ok(node.to_string());
    }
    let bad = |why: &str| CacheError::InvalidConfig(format!("cluster node {node:?}: {why}"));
    let (host, port) = node.rsplit_once(':').ok_or_else(|| bad("write host:port"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
    let mut url =
        url::Url::parse(base).map_err(|e| CacheError::InvalidConfig(format!("cache URL {}: {e}", redact_url(base))))?;
    url.set_host(Some(host.trim_matches(['[', ']'])))
        .map_err(|e| bad(&e.to_string()))?;
    url.set_port(Some(port)).map_err(|()| bad("cannot carry a port"))?;
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_keep_the_credentials_and_scheme() {
        assert_eq!(
            seed_url("rediss://:pw@127.0.0.1:7000/#insecure", "127.0.0.1:7001").unwrap(),
            "rediss://:pw@127.0.0.1:7001/#insecure"
        );
        assert_eq!(
            seed_url("redis://127.0.0.1:7000", "redis://10.0.0.1:1").unwrap(),
            "redis://10.0.0.1:1"
        );
        assert!(seed_url("redis://127.0.0.1:7000", "nohost").is_err());
    }
}
