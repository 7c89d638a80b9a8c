//! The cluster connection's client, and how commands, pipelines and
//! scripts run on it.

use std::future::Future;
use std::time::Duration;

use futures_util::future::join_all;
use redis::cluster::{ClusterClient, ClusterClientBuilder};

use crate::config::TlsCerts;
use crate::error::{CacheError, CacheResult};

/// A cluster client on `seeds`: no retries, `limit` to connect and to answer.
pub(super) fn client(seeds: &[String], limit: Duration, tls: &TlsCerts) -> CacheResult<ClusterClient> {
    let builder = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .retries(0)
        .connection_timeout(limit)
        .response_timeout(limit);
    with_certs(builder, tls)?
        .build()
        .map_err(|e| CacheError::InvalidConfig(format!("cannot use the cluster nodes: {e}")))
}

/// Runs every future to its end (one slot's failure does not abandon the
/// others' commands, which would look unanswered) and returns the answers
/// in order, or the first error.
pub(super) async fn every<T>(
    futures: impl IntoIterator<Item = impl Future<Output = CacheResult<T>>>,
) -> CacheResult<Vec<T>> {
    join_all(futures).await.into_iter().collect()
}

/// TLS certificates for every node, when configured.
fn with_certs(builder: ClusterClientBuilder, tls: &TlsCerts) -> CacheResult<ClusterClientBuilder> {
    Ok(match crate::backend::tls::certificates(tls)? {
        #[cfg(feature = "tls")]
        Some(certs) => builder.certs(certs),
        _ => builder,
    })
}
