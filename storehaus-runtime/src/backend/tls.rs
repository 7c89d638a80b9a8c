//! The configured TLS certificates in redis-rs's shape, for every kind of
//! Redis connection (one node, a cluster, Sentinel and the primaries it
//! names), and the process-wide rustls provider they need.

use crate::config::TlsCerts;
use crate::error::CacheResult;

/// What redis-rs takes as certificates (nothing can be one without `tls`).
#[cfg(feature = "tls")]
pub(crate) type Certificates = redis::TlsCertificates;
/// What redis-rs takes as certificates (nothing can be one without `tls`).
#[cfg(not(feature = "tls"))]
pub(crate) enum Certificates {}

/// The certificates to hand to a redis-rs client builder: `None` when none
/// are configured (plain `rediss://` with the system's roots).
///
/// # Errors
/// [`CacheError::InvalidConfig`](crate::CacheError::InvalidConfig) when certificates are configured but this
/// build has no `tls` feature.
pub(crate) fn certificates(tls: &TlsCerts) -> CacheResult<Option<Certificates>> {
    if !tls.is_set() {
        return Ok(None);
    }
    #[cfg(feature = "tls")]
    {
        install_crypto_provider();
        Ok(Some(redis::TlsCertificates {
            client_tls: tls.client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: tls.root.clone(),
        }))
    }
    #[cfg(not(feature = "tls"))]
    {
        Err(crate::error::CacheError::InvalidConfig(
            "TLS certificates need the `tls` feature of storehaus".into(),
        ))
    }
}

/// rustls needs a process-wide CryptoProvider. Applications that chose one
/// (ring, aws-lc-rs, ...) keep theirs; otherwise ring's is installed, so that
/// `rediss://` works even when several providers are compiled in (where
/// rustls cannot pick one by itself and would panic).
#[cfg(feature = "tls")]
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
