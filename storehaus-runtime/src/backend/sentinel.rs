//! `redis+sentinel://` URLs: the primary of a service, found through
//! Sentinel on every connect, so that a failover is followed without a
//! restart of the application.
//!
//! `redis+sentinel://[user:password@]host:26379,host:26380/service[/db]`
//! (`rediss+sentinel://` for TLS to the primary). The credentials, the
//! database and TLS are the primary's, as in a `redis://` URL; the
//! Sentinels themselves are asked without credentials.

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, TlsMode};

use crate::config::{redact_url, TlsCerts};
use crate::error::{CacheError, CacheResult};

/// What a `redis+sentinel://` URL says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub sentinels: Vec<(String, u16)>,
    pub service: String,
    pub db: i64,
}

impl SentinelUrl {
    /// Parses a `redis+sentinel://` or `rediss+sentinel://` URL.
    ///
    /// # Errors
    /// `InvalidConfig` naming what is wrong (never the password).
    pub fn parse(url: &str) -> CacheResult<SentinelUrl> {
        let bad = |why: &str| CacheError::InvalidConfig(format!("cache URL {}: {why}", redact_url(url)));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let tls = match scheme {
            "redis+sentinel" => false,
            "rediss+sentinel" => true,
            _ => return Err(bad("not a Sentinel URL")),
        };
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        let (userinfo, rest) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (hosts, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no service name: write .../mymaster"))?;
        let mut sentinels = Vec::new();
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            let (h, p) = match host.rsplit_once(':') {
                Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("a Sentinel port is not a number"))?),
                None => (host, 26379),
            };
            sentinels.push((h.trim_matches(['[', ']']).to_string(), p));
        }
        if sentinels.is_empty() {
            return Err(bad("no Sentinel host"));
        }
        let mut path = path.split('/');
        let service = path.next().unwrap_or("").to_string();
        if service.is_empty() {
            return Err(bad("no service name: write .../mymaster"));
        }
        let db = match path.next() {
            Some(db) if !db.is_empty() => db.parse().map_err(|_| bad("the database is not a number"))?,
            _ => 0,
        };
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| decode(u)), Some(decode(p))),
                None => (None, Some(decode(info))),
            },
        };
        Ok(SentinelUrl {
            tls,
            username,
            password,
            sentinels,
            service,
            db,
        })
    }

    /// A redis-rs Sentinel client that finds the primary of the service.
    ///
    /// # Errors
    /// `InvalidConfig` when redis-rs refuses the settings.
    pub fn client(&self, tls: &TlsCerts) -> CacheResult<SentinelClient> {
        let addrs = self.sentinels.iter().map(|(h, p)| ConnectionAddr::Tcp(h.clone(), *p));
        let mut builder = SentinelClientBuilder::new(addrs, &self.service, SentinelServerType::Master)
            .map_err(|e| CacheError::InvalidConfig(format!("Sentinel: {e}")))?
            .set_client_to_redis_db(self.db);
        if let Some(u) = &self.username {
            builder = builder.set_client_to_redis_username(u);
        }
        if let Some(p) = &self.password {
            builder = builder.set_client_to_redis_password(p);
        }
        if self.tls {
            builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
        }
        builder = with_certs(builder, tls)?;
        builder
            .build()
            .map_err(|e| CacheError::InvalidConfig(format!("Sentinel: {e}")))
    }
}

fn with_certs(builder: SentinelClientBuilder, tls: &TlsCerts) -> CacheResult<SentinelClientBuilder> {
    Ok(match crate::backend::tls::certificates(tls)? {
        #[cfg(feature = "tls")]
        Some(certs) => builder.set_client_to_redis_certificates(certs),
        _ => builder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_parse() {
        let u = SentinelUrl::parse("redis+sentinel://:p%40ss@127.0.0.1:26379,h2:26380/mymaster/2").unwrap();
        assert_eq!(
            u,
            SentinelUrl {
                tls: false,
                username: None,
                password: Some("p@ss".into()),
                sentinels: vec![("127.0.0.1".into(), 26379), ("h2".into(), 26380)],
                service: "mymaster".into(),
                db: 2,
            }
        );
        let u = SentinelUrl::parse("rediss+sentinel://h/svc").unwrap();
        assert!(u.tls);
        assert_eq!(u.sentinels, vec![("h".to_string(), 26379)]);
        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel:///svc",
            "redis+sentinel://h:x/svc",
        ] {
            assert!(SentinelUrl::parse(bad).is_err(), "{bad}");
        }
        let err = SentinelUrl::parse("redis+sentinel://:s3cret@h:x/svc").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
