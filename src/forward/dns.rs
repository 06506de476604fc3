//! Name resolution for everything dynostat connects to (the intake, the
//! proxy, the checks' databases): hickory, not the C library, so the static
//! binary resolves on every stack (DESIGN §6).
//!
//! One resolver type for both callers: reqwest gets it through
//! `ClientBuilder::dns_resolver` rather than its own `hickory-dns` feature,
//! so the binary carries the lookup path once (two callers of reqwest's
//! copy and ours cost 118 KB more; docs/PERFORMANCE.md).
//!
//! Must never: resolve through `getaddrinfo`, or build the resolver outside
//! the runtime that uses it (it is built on the first lookup).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::TokioResolver;

/// A lazily built system resolver (`/etc/resolv.conf`), IPv4 and IPv6 as
/// reqwest's own asked for, for happy eyeballs.
#[derive(Clone, Default)]
pub struct Dns {
    resolver: Arc<Mutex<Option<TokioResolver>>>,
}

impl Dns {
    fn resolver(&self) -> io::Result<TokioResolver> {
        let mut held = self
            .resolver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(r) = held.as_ref() {
            return Ok(r.clone());
        }
        let mut builder = TokioResolver::builder_tokio()
            .map_err(|e| io::Error::other(format!("no DNS configuration: {e}")))?;
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let r = builder.build();
        *held = Some(r.clone());
        Ok(r)
    }

    /// The addresses of `host`.
    pub async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let found = self
            .resolver()?
            .lookup_ip(host)
            .await
            .map_err(|e| io::Error::other(format!("could not resolve {host}: {e}")))?;
        Ok(found.iter().collect())
    }
}

impl reqwest::dns::Resolve for Dns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.clone();
        Box::pin(async move {
            let ips = dns.lookup(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}
