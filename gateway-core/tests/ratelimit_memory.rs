//! The local rate limit's memory bound, measured as process RSS. Alone in its test binary so
//! no other test's allocations land in the measurement.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use gateway_core::filter::ratelimit::{RateLimit, RateLimitConfig, MAX_BYTES_PER_KEY};
use gateway_core::filter::{Decision, Filter, FilterState, RequestHeader, RequestInfo};

/// Resident set size of this process, in bytes (`VmRSS` of `/proc/self/status`).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[tokio::test(flavor = "current_thread")]
async fn ratelimit_a_million_distinct_keys_stay_within_the_rss_bound() {
    const KEYS: u64 = 1_000_000;
    let config: RateLimitConfig =
        toml::from_str("rate = \"5/s\"\ncleanup_interval = \"1h\"").expect("settings");
    let limit = RateLimit::new("flood", config).expect("builds");
    let mut header = RequestHeader::build("GET", b"/", None).expect("request");
    // Warm up everything but the table (allocator arenas, the runtime) before the baseline.
    for i in 0..1000u64 {
        let _ = check(&limit, &mut header, u64::MAX - i).await;
    }
    // Their buckets are full again after 1 s (+ one interval): the cleanup drops them.
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    limit.cleanup();
    assert_eq!(limit.key_count(), 0);
    let Some(before) = rss_bytes() else {
        eprintln!("skipping: /proc/self/status is not readable here");
        return;
    };
    let started = Instant::now();
    let mut admitted = 0u64;
    for i in 0..KEYS {
        if check(&limit, &mut header, i).await {
            admitted += 1;
        }
    }
    let after = rss_bytes().expect("still readable");
    let grown = after.saturating_sub(before);
    eprintln!(
        "{KEYS} keys in {:?}: {} buckets, table {} bytes ({} per key), RSS +{grown} bytes ({} per key)",
        started.elapsed(),
        limit.key_count(),
        limit.table_bytes(),
        limit.table_bytes() as u64 / KEYS,
        grown / KEYS,
    );
    assert_eq!(admitted, KEYS, "every new key starts with a full bucket");
    assert!(limit.key_count() as u64 >= KEYS);
    assert!(
        grown <= MAX_BYTES_PER_KEY as u64 * KEYS,
        "RSS grew {grown} bytes for {KEYS} keys; the documented bound is {MAX_BYTES_PER_KEY} per key"
    );
}

/// One request from client IP `n` (keyed on `client_ip`, the default); whether it was admitted.
async fn check(limit: &RateLimit, header: &mut RequestHeader, n: u64) -> bool {
    let ip = Ipv6Addr::from(u128::from(n) | 0x2001_0db8 << 96);
    let mut info = RequestInfo {
        header,
        client_ip: Some(IpAddr::V6(ip)),
        route: "r",
        request_id: "id",
    };
    let mut state = FilterState::default();
    matches!(
        limit.on_request(&mut info, &mut state).await,
        Decision::Continue
    )
}
