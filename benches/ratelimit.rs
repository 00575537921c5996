//! The cost of one `rate_limit` check through the filter's request phase (key framing and
//! hashing, the GCRA decision, the response fields), on one key and among 100 000 keys, and of
//! a `concurrency_limit` permit taken and given back.
//!
//! `cargo bench --bench ratelimit -- --quick`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gatehouse::filter::ratelimit::{
    ConcurrencyLimit, ConcurrencyLimitConfig, RateLimit, RateLimitConfig,
};
use gatehouse::filter::{Decision, Filter, FilterState, RequestHeader, RequestInfo};

/// A local limit on the client IP.
fn rate_limit(rate: &str, burst: Option<u32>, cleanup: Option<&str>) -> RateLimit {
    let mut config = RateLimitConfig::new(rate);
    config.burst = burst;
    config.cleanup_interval = cleanup.map(str::to_string);
    RateLimit::new("bench", config).expect("valid settings")
}

/// A filter that does nothing: the baseline.
struct Noop;

#[async_trait::async_trait]
impl Filter for Noop {}

/// One request phase from client `ip`; whether it was admitted.
fn check(filter: &dyn Filter, header: &mut RequestHeader, ip: u32) -> bool {
    let mut info = RequestInfo {
        header,
        client_ip: Some(IpAddr::V4(Ipv4Addr::from(ip))),
        route: "api",
        request_id: "bench",
    };
    let mut state = FilterState::default();
    let decision = futures::executor::block_on(filter.on_request(&mut info, &mut state));
    black_box(&state);
    matches!(decision, Decision::Continue)
}

fn bench(c: &mut Criterion) {
    let mut header = RequestHeader::build("GET", b"/api/items", None).expect("request");
    // What the harness itself costs (request state, the boxed future, block_on): subtract it.
    c.bench_function("harness/noop_filter", |b| {
        b.iter(|| check(&Noop, &mut header, 1))
    });

    let mut group = c.benchmark_group("rate_limit");
    group.throughput(Throughput::Elements(1));

    // One key, always admitted: only a huge burst keeps up with the bench, so `r` is beyond
    // the 1024 header values kept ready and the fields are formatted (the slow case).
    let admitting = rate_limit("1000000/s", Some(1_000_000), None);
    group.bench_function("one_key_admitted_burst_1m", |b| {
        b.iter(|| assert!(check(&admitting, &mut header, 1)))
    });

    // One key over its limit (the steady state of an abusive client): the 429 path.
    let refusing = rate_limit("5/s", Some(5), None);
    group.bench_function("one_key_refused_429", |b| {
        b.iter(|| check(&refusing, &mut header, 1))
    });

    // 100 000 keys at 1000/s, burst 1000: each key is back every ~50 ms with its bucket nearly
    // full, so every check is admitted with ready-made fields.
    const KEYS: u32 = 100_000;
    let many = rate_limit("1000/s", Some(1000), Some("1h"));
    for ip in 0..KEYS {
        check(&many, &mut header, ip);
    }
    assert_eq!(many.key_count(), KEYS as usize);
    let mut next = 0u32;
    group.bench_function("among_100k_keys_admitted", |b| {
        b.iter(|| {
            // Stride through the keys so consecutive checks hit different cache lines.
            next = (next + 7919) % KEYS;
            check(&many, &mut header, next)
        })
    });
    group.finish();

    let slots = ConcurrencyLimit::new("bench-slots", ConcurrencyLimitConfig::new(10))
        .expect("valid settings");
    c.bench_function("concurrency_limit/permit_taken_and_released", |b| {
        b.iter(|| check(&slots, &mut header, 1))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
