//! Backends given by name (`user:3001`, `users.shop.svc.cluster.local:3001`): Envoy's
//! strict-DNS model. A name is resolved when a config first names it and again in the
//! background; every address it has becomes a backend of the pool. A lookup that fails keeps
//! the last good addresses (and is counted and logged), so a DNS hiccup never empties a pool.
//!
//! The answers live in [`Names`], one per gateway, shared by every snapshot: a reload reuses
//! what is known instead of resolving again, and a change of addresses rebuilds the snapshot
//! with the same config (see [`crate::reload::ConfigStore::refresh_names`]), carrying the
//! health and ejections of the addresses that stay.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::DnsConfig;

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Every address of the name, with the port asked for.
    pub addrs: Vec<SocketAddr>,
    /// How long the answer may be kept, when the resolver knows (the records' TTL).
    pub ttl: Option<Duration>,
}

/// Looks names up. The default is the system's resolver ([`SystemResolver`]); an embedder
/// may bring one that knows TTLs, and tests one they control
/// ([`crate::GatewayBuilder::resolver`]).
pub trait Resolve: Send + Sync + 'static {
    /// Every address `host` has now, each with `port`. Called off the request path (at load,
    /// and from a background task), and may block.
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Answer>;
}

/// The operating system's resolver (`getaddrinfo`: `/etc/hosts`, `/etc/resolv.conf` with its
/// search domains, as every other program on the host resolves). It reports no TTL, so a
/// name is looked up again every `dns.max_refresh`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Answer> {
        let addrs = (host, port).to_socket_addrs()?.collect();
        Ok(Answer { addrs, ttl: None })
    }
}

/// One name's last good addresses and when to look it up again.
#[derive(Debug, Clone)]
struct Entry {
    addrs: Vec<SocketAddr>,
    due: Instant,
    /// The last lookup failed (its addresses are older ones, or none).
    failing: bool,
}

/// A lookup the background refresh made, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Same addresses as before.
    Unchanged,
    /// Other addresses: the pools using the name are rebuilt.
    Changed,
    /// Failed: the last good addresses stay.
    Failed,
}

impl Lookup {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Lookup::Unchanged => "unchanged",
            Lookup::Changed => "changed",
            Lookup::Failed => "failed",
        }
    }
}

/// The gateway's resolved names: `host:port` to its last good addresses.
pub struct Names {
    resolver: Arc<dyn Resolve>,
    entries: Mutex<HashMap<(String, u16), Entry>>,
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names").finish_non_exhaustive()
    }
}

impl Names {
    /// Names resolved by `resolver`.
    pub fn new(resolver: Arc<dyn Resolve>) -> Names {
        Names {
            resolver,
            entries: Mutex::default(),
        }
    }

    /// Names resolved by the system's resolver.
    pub fn system() -> Arc<Names> {
        Arc::new(Names::new(Arc::new(SystemResolver)))
    }

    /// The addresses of `host:port` for a snapshot being built: the last known ones, or a
    /// lookup now for a name not seen before. `Err` says why a new name has none yet.
    pub fn addrs(&self, host: &str, port: u16, dns: &DnsConfig) -> Result<Vec<SocketAddr>, String> {
        let key = (host.to_string(), port);
        if let Some(entry) = self.lock().get(&key) {
            return Ok(entry.addrs.clone());
        }
        let (entry, outcome) = self.look_up(host, port, dns, None);
        let addrs = entry.addrs.clone();
        self.lock().insert(key, entry);
        match outcome {
            Err(e) => Err(e),
            Ok(_) => Ok(addrs),
        }
    }

    /// Look up again every name in `wanted` (as a snapshot's pools name them) whose time has
    /// come, forgetting names no longer wanted. Each lookup made, with its outcome.
    pub fn refresh(
        &self,
        wanted: &[(String, u16, DnsConfig)],
        now: Instant,
    ) -> Vec<(String, Lookup)> {
        let due: Vec<_> = {
            let mut entries = self.lock();
            entries.retain(|(h, p), _| wanted.iter().any(|(wh, wp, _)| wh == h && wp == p));
            wanted
                .iter()
                .filter(|(h, p, _)| entries.get(&(h.clone(), *p)).is_none_or(|e| e.due <= now))
                .cloned()
                .collect()
        };
        let mut made = Vec::new();
        for (host, port, dns) in due {
            let key = (host.clone(), port);
            let before = self.lock().get(&key).cloned();
            let (entry, outcome) = self.look_up(&host, port, &dns, before.as_ref());
            let lookup = match (outcome, before) {
                (Err(_), _) => Lookup::Failed,
                (Ok(_), Some(b)) if b.addrs == entry.addrs => Lookup::Unchanged,
                (Ok(_), _) => Lookup::Changed,
            };
            self.lock().insert(key, entry);
            made.push((format!("{host}:{port}"), lookup));
        }
        made
    }

    /// Every name known, with its addresses and whether its last lookup failed (for
    /// `/admin/config`).
    pub fn known(&self) -> Vec<(String, Vec<SocketAddr>, bool)> {
        let mut out: Vec<_> = self
            .lock()
            .iter()
            .map(|((h, p), e)| (format!("{h}:{p}"), e.addrs.clone(), e.failing))
            .collect();
        out.sort();
        out
    }

    /// One lookup: the entry to keep (the last good addresses when it fails) and the outcome.
    fn look_up(
        &self,
        host: &str,
        port: u16,
        dns: &DnsConfig,
        before: Option<&Entry>,
    ) -> (Entry, Result<(), String>) {
        let now = Instant::now();
        let found = self
            .resolver
            .resolve(host, port)
            .map_err(|e| e.to_string())
            .and_then(|answer| {
                if answer.addrs.is_empty() {
                    Err("no address".to_string())
                } else {
                    Ok(answer)
                }
            });
        match found {
            Ok(answer) => {
                let mut addrs = answer.addrs;
                addrs.sort();
                addrs.dedup();
                let keep = answer
                    .ttl
                    .unwrap_or(dns.max_refresh)
                    .clamp(dns.min_refresh, dns.max_refresh.max(dns.min_refresh));
                let entry = Entry {
                    addrs,
                    due: now + keep,
                    failing: false,
                };
                (entry, Ok(()))
            }
            Err(e) => {
                tracing::warn!(name = %format!("{host}:{port}"), error = %e, kept = before.map_or(0, |b| b.addrs.len()), "backend name did not resolve; keeping its last addresses");
                let entry = Entry {
                    addrs: before.map(|b| b.addrs.clone()).unwrap_or_default(),
                    // Try again soon, not after a whole TTL.
                    due: now + dns.min_refresh,
                    failing: true,
                };
                (entry, Err(e))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u16), Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `host:port` split, when `text` is a name with a port rather than an `ip:port`.
pub fn split_name(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    is_dns_name(host).then_some((host, port))
}

/// A host name as RFC 1123 allows (letters, digits, hyphens; labels of 1-63; at most 253),
/// and not an address.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.parse::<std::net::IpAddr>().is_err()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // A last label of digits only is an address typed wrong (`10.0.0.300`).
        && !host.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_are_told_apart() {
        assert_eq!(split_name("user:3001"), Some(("user", 3001)));
        assert_eq!(
            split_name("users.shop.svc.cluster.local:3001"),
            Some(("users.shop.svc.cluster.local", 3001))
        );
        for not_a_name in [
            "10.0.0.1:80",
            "10.0.0.300:80",
            "[::1]:80",
            "user",
            "user:0",
            "user:99999",
            "-user:80",
            "us_er:80",
            ":80",
        ] {
            assert_eq!(split_name(not_a_name), None, "{not_a_name}");
        }
    }

    struct Table(Mutex<Vec<std::io::Result<Answer>>>);

    impl Resolve for Table {
        fn resolve(&self, _host: &str, _port: u16) -> std::io::Result<Answer> {
            self.0.lock().unwrap().remove(0)
        }
    }

    fn answer(last: &[u8], ttl: Option<u64>) -> std::io::Result<Answer> {
        Ok(Answer {
            addrs: last
                .iter()
                .map(|l| SocketAddr::from(([10, 0, 0, *l], 80)))
                .collect(),
            ttl: ttl.map(Duration::from_secs),
        })
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_addresses_and_ttls_are_held_to_the_bounds() {
        let table = Table(Mutex::new(vec![
            answer(&[2, 1], Some(3600)),
            Err(std::io::Error::other("SERVFAIL")),
            answer(&[1, 2], Some(0)),
            answer(&[3], None),
        ]));
        let names = Names::new(Arc::new(table));
        let dns = DnsConfig {
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(30),
        };
        let first = names.addrs("api", 80, &dns).unwrap();
        assert_eq!(first.len(), 2);
        assert!(
            first[0] < first[1],
            "sorted, so an unchanged set compares equal"
        );
        let wanted = vec![("api".to_string(), 80, dns.clone())];
        let start = Instant::now();
        // A TTL of an hour is held to max_refresh: nothing is due before 30 s.
        assert!(names
            .refresh(&wanted, start + Duration::from_secs(29))
            .is_empty());
        let made = names.refresh(&wanted, start + Duration::from_secs(31));
        assert_eq!(made, vec![("api:80".to_string(), Lookup::Failed)]);
        assert_eq!(names.known()[0].1, first, "kept");
        assert!(names.known()[0].2, "marked failing");
        // A failure is retried after min_refresh.
        let made = names.refresh(&wanted, Instant::now() + Duration::from_secs(2));
        assert_eq!(made, vec![("api:80".to_string(), Lookup::Unchanged)]);
        // A TTL of 0 is held to min_refresh; no TTL means max_refresh.
        assert!(names
            .refresh(&wanted, Instant::now() + Duration::from_millis(500))
            .is_empty());
        let made = names.refresh(&wanted, Instant::now() + Duration::from_secs(2));
        assert_eq!(made, vec![("api:80".to_string(), Lookup::Changed)]);
        // A name no snapshot wants any more is forgotten.
        assert!(names.refresh(&[], Instant::now()).is_empty());
        assert!(names.known().is_empty());
    }
}
