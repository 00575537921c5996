//! JWT verification through the `jwt` filter's request phase, per algorithm: `cold` (cache
//! off: header parse, signature check, claim validation, forwarded header) and `cached` (a hot
//! token: SHA-256 of the token and a cache lookup). Keys: HS256 with a 36-byte secret, RS256
//! with RSA-2048, ES256 on P-256, EdDSA on Ed25519 (`tests/fixtures/jwt/`).
//!
//! `cargo bench --bench jwt -- --quick`

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gatehouse::filter::auth::JwtFilter;
use gatehouse::filter::RequestHeader;
use gatehouse::{Decision, Filter, FilterSpec, FilterState, RequestInfo};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const SECRET: &str = "bench-secret-bench-secret-bench-123";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

/// (label, filter key setting, algorithm, signing key)
fn cases() -> Vec<(&'static str, String, Algorithm, EncodingKey)> {
    let pem = |name: &str| format!("public_key_file = {:?}", fixture(name));
    vec![
        (
            "HS256",
            format!("secret = {SECRET:?}"),
            Algorithm::HS256,
            EncodingKey::from_secret(SECRET.as_bytes()),
        ),
        (
            "RS256",
            pem("rsa.pub.pem"),
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&read("rsa.key.pem")).expect("rsa key"),
        ),
        (
            "ES256",
            pem("ec256.pub.pem"),
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&read("ec256.key.pem")).expect("ec key"),
        ),
        (
            "EdDSA",
            pem("ed25519.pub.pem"),
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&read("ed25519.key.pem")).expect("ed key"),
        ),
    ]
}

fn filter(key_setting: &str, alg: Algorithm, cache_entries: usize) -> JwtFilter {
    let text = format!(
        "{key_setting}\nalgorithms = [\"{alg:?}\"]\nissuer = \"gatehouse\"\n\
         audience = \"gatehouse-api\"\ncache_entries = {cache_entries}\n\
         forward_claims = {{ \"x-user-id\" = \"sub\" }}\n"
    );
    let table: toml::Table = text.parse().expect("toml");
    JwtFilter::from_spec(&FilterSpec {
        name: "auth",
        settings: &table,
    })
    .expect("filter builds")
}

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "sub": "user-42",
        "iss": "gatehouse",
        "aud": "gatehouse-api",
        "iat": now,
        "exp": now + 3600,
        "roles": ["customer"],
    });
    encode(&Header::new(alg), &claims, key).expect("sign")
}

fn verify_once(f: &JwtFilter, header: &mut RequestHeader) {
    let mut state = FilterState::default();
    let mut info = RequestInfo {
        header,
        client_ip: None,
        route: "bench",
        request_id: "bench",
    };
    // Configured keys never wait on I/O, so the future completes on its first poll.
    match futures::executor::block_on(f.on_request(&mut info, &mut state)) {
        Decision::Continue => {}
        Decision::Respond(r) => panic!("refused: {}", r.reason),
    }
    black_box(state);
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt_verify");
    for (label, key_setting, alg, key) in cases() {
        let token = token(alg, &key);
        let mut header = RequestHeader::build("GET", b"/api/orders", None).expect("header");
        header
            .insert_header("authorization", format!("Bearer {token}"))
            .expect("header");
        for (mode, entries) in [("cold", 0), ("cached", 10_000)] {
            let f = filter(&key_setting, alg, entries);
            verify_once(&f, &mut header);
            group.bench_function(BenchmarkId::new(mode, label), |b| {
                b.iter(|| verify_once(&f, &mut header))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
