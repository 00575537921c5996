//! The JWKS key set against a tiny HTTP server the tests control: refresh limits, rotation,
//! outages, and the refresher stopping when the key set is dropped.

use super::*;
use std::sync::atomic::AtomicUsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY_A: &str =
    r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"a"}"#;
const KEY_B: &str =
    r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"b"}"#;

/// A one-route HTTP server answering with whatever `body` holds (`None`: 503).
struct Server {
    url: String,
    body: Arc<Mutex<Option<String>>>,
    hits: Arc<AtomicUsize>,
}

async fn server(initial: Option<&str>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let body = Arc::new(Mutex::new(initial.map(|b| format!(r#"{{"keys":[{b}]}}"#))));
    let hits = Arc::new(AtomicUsize::new(0));
    let (b, h) = (Arc::clone(&body), Arc::clone(&hits));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            h.fetch_add(1, Ordering::SeqCst);
            let answer = match b.lock().unwrap().clone() {
                Some(doc) => format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                    doc.len()
                ),
                None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
            };
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    Server { url, body, hits }
}

fn jwks(url: &str, refresh: Duration, min_refresh: Duration) -> Arc<Jwks> {
    Arc::new(
        Jwks::new(JwksSettings {
            filter: "test".to_string(),
            url: url.to_string(),
            algorithms: vec![Algorithm::EdDSA],
            refresh,
            min_refresh,
            timeout: Duration::from_secs(2),
        })
        .unwrap(),
    )
}

#[tokio::test]
async fn unknown_kids_refresh_at_most_once_per_min_refresh() {
    let srv = server(Some(KEY_A)).await;
    let j = jwks(
        &srv.url,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    assert!(j.key_for(Some("a")).await.is_ok());
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);
    for _ in 0..20 {
        assert_eq!(
            j.key_for(Some("nope")).await.err(),
            Some(Rejection::UnknownKey)
        );
    }
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        1,
        "a kid flood cannot drive fetches"
    );
}

#[tokio::test]
async fn a_rotated_kid_is_found_by_refreshing_and_a_failed_refresh_keeps_the_last_keys() {
    let srv = server(Some(KEY_A)).await;
    let j = jwks(
        &srv.url,
        Duration::from_secs(3600),
        Duration::from_millis(50),
    );
    let (_, first_generation) = j.key_for(Some("a")).await.unwrap();
    *srv.body.lock().unwrap() = Some(format!(r#"{{"keys":[{KEY_B}]}}"#));
    tokio::time::sleep(Duration::from_millis(60)).await;
    let (_, generation) = j.key_for(Some("b")).await.expect("the new kid works");
    assert!(generation > first_generation);
    assert_eq!(
        j.key_for(Some("a")).await.err(),
        Some(Rejection::UnknownKey)
    );
    *srv.body.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(j.refresh(true).await);
    assert!(
        j.key_for(Some("b")).await.is_ok(),
        "last good keys keep serving"
    );
}

#[tokio::test]
async fn no_key_set_ever_is_no_keys_not_a_bad_token() {
    let srv = server(None).await;
    let j = jwks(
        &srv.url,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    assert_eq!(j.key_for(Some("a")).await.err(), Some(Rejection::NoKeys));
    assert_eq!(j.key_for(None).await.err(), Some(Rejection::NoKeys));
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_same_document_keeps_the_generation() {
    let srv = server(Some(KEY_A)).await;
    let j = jwks(
        &srv.url,
        Duration::from_secs(3600),
        Duration::from_millis(1),
    );
    let (_, g1) = j.key_for(Some("a")).await.unwrap();
    assert!(j.refresh(true).await);
    let (_, g2) = j.key_for(Some("a")).await.unwrap();
    assert_eq!(
        g1, g2,
        "cached tokens survive a refresh that changed nothing"
    );
}

#[tokio::test]
async fn the_refresher_runs_in_the_background_and_stops_when_dropped() {
    let srv = server(Some(KEY_A)).await;
    let j = jwks(
        &srv.url,
        Duration::from_millis(30),
        Duration::from_millis(30),
    );
    j.key_for(Some("a")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = srv.hits.load(Ordering::SeqCst);
    assert!(before >= 3, "refreshed in the background ({before})");
    drop(j);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = srv.hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        after,
        "a dropped key set stops fetching"
    );
}

#[test]
fn building_needs_no_runtime_and_fetches_nothing() {
    let j = jwks(
        "http://127.0.0.1:9/jwks",
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    assert!(j.current().is_none());
    assert_eq!(j.fetches(), 0);
}
