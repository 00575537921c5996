//! Route matching and path normalization.
//!
//! `find` on route tables of 10, 1 000 and 10 000 routes built like an operator would write
//! them: distinct path prefixes (`/svc{i}/v1`), every 10th route also bound to a host, every
//! 7th limited to some methods, every 50th a regex anchored on a literal first segment
//! (`^/re{i}/items/[0-9]+$`). Measured: a prefix hit near the end of the table, a host-bound
//! hit near the end, a regex hit near the end, and a miss. Regexes like these are indexed by
//! their first segment as literal paths are, so none of the four walks the table: a miss
//! costs ~20 ns and a regex hit ~55 ns at 10, 1 000 and 10 000 routes (before the index took
//! regexes: 31 ns / 298 ns / 4.4 µs for a miss, 44 ns / 77 ns / 5.4 µs for a regex hit).
//!
//! `cargo bench --bench routing -- --quick`

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gatehouse::config::Source;
use gatehouse::routing::{normalize_path, RequestView};
use gatehouse::Snapshot;
use http::{HeaderMap, Method};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

fn is_host_route(i: usize) -> bool {
    i % 10 == 3
}

fn is_regex_route(i: usize) -> bool {
    i % 50 == 7
}

/// A config with `n` routes to one upstream.
fn config_text(n: usize) -> String {
    let mut t = String::from(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nthreads = 1\n\n\
         [[upstreams]]\nname = \"backend\"\nbackends = [\"127.0.0.1:9\"]\n",
    );
    for i in 0..n {
        let mut m = Vec::new();
        if is_regex_route(i) {
            m.push(format!("path_regex = '^/re{i}/items/[0-9]+$'"));
        } else {
            m.push(format!("path_prefix = \"/svc{i}/v1\""));
        }
        if is_host_route(i) {
            m.push(format!("host = \"api{i}.example.com\""));
        }
        if i % 7 == 5 {
            m.push("methods = [\"GET\", \"POST\"]".to_string());
        }
        write!(
            t,
            "\n[[routes]]\nname = \"r{i}\"\nupstream = \"backend\"\nmatch = {{ {} }}\n",
            m.join(", ")
        )
        .unwrap();
    }
    t
}

fn snapshot(n: usize) -> Snapshot {
    Snapshot::from_source(
        &Source::inline(config_text(n)),
        1,
        None,
        &gatehouse::filter::FilterRegistry::builtin(),
    )
    .expect("bench config builds")
}

/// The last route index below `n` that satisfies `pred`.
fn last_where(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    (0..n).rev().find(|&i| pred(i)).expect("such a route")
}

fn bench_find(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_find");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let headers = HeaderMap::new();
    for n in SIZES {
        let snap = snapshot(n);
        let plain = last_where(n, |i| !is_host_route(i) && !is_regex_route(i));
        let host = last_where(n, is_host_route);
        let regex = last_where(n, is_regex_route);
        let cases: [(&str, Option<String>, String, Option<String>); 4] = [
            (
                "hit_prefix",
                None,
                format!("/svc{plain}/v1/users/42"),
                Some(format!("r{plain}")),
            ),
            (
                "hit_host",
                Some(format!("api{host}.example.com")),
                format!("/svc{host}/v1/orders"),
                Some(format!("r{host}")),
            ),
            (
                "hit_regex",
                None,
                format!("/re{regex}/items/123456"),
                Some(format!("r{regex}")),
            ),
            ("miss", None, "/nothing/here/at/all".to_string(), None),
        ];
        for (name, req_host, path, want) in &cases {
            let view = RequestView {
                method: &Method::GET,
                host: req_host.as_deref(),
                path,
                headers: &headers,
            };
            let got = snap.router.find(&view).map(|r| r.name.to_string());
            assert_eq!(&got, want, "{name} at {n} routes");
            group.bench_with_input(BenchmarkId::new(*name, n), &view, |b, view| {
                b.iter(|| black_box(snap.router.find(black_box(view)).is_some()))
            });
        }
    }
    group.finish();
}

fn bench_normalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize_path");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let typical = "/api/v1/users/12345/orders";
    let tricky = "/api//v1/./users/%2e%2e/%7Euser/%41bc/../orders%2fx/.%2E/items%2F7";
    assert_eq!(normalize_path(typical).unwrap(), typical);
    assert_eq!(normalize_path(tricky).unwrap(), "/api/v1/~user/items%2F7");
    group.bench_function("typical", |b| b.iter(|| normalize_path(black_box(typical))));
    group.bench_function("tricky", |b| b.iter(|| normalize_path(black_box(tricky))));
    group.finish();
}

criterion_group!(benches, bench_find, bench_normalize);
criterion_main!(benches);
