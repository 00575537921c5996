//! A push service for the tests, on a real socket: it checks each request as a browser
//! vendor's push service does (RFC 8292 VAPID token for its own origin, signed by the key in
//! `k`, which must be the application server key the browser subscribed with; RFC 8291
//! `aes128gcm` body), then decrypts the body with the browser's private key, as the browser
//! would, and keeps the JSON. Each browser's endpoint can be told to answer a status (410:
//! "this subscription is gone").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::{json, Value};

/// A browser's side of a subscription: its key pair and auth secret.
pub struct Browser {
    secret: p256::SecretKey,
    auth: [u8; 16],
}

impl Browser {
    fn new() -> Browser {
        use rand::RngCore;
        let secret = loop {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            if let Ok(k) = p256::SecretKey::from_slice(&bytes) {
                break k;
            }
        };
        let mut auth = [0u8; 16];
        rand::rng().fill_bytes(&mut auth);
        Browser { secret, auth }
    }
}

#[derive(Default)]
struct Inner {
    browsers: HashMap<String, Browser>,
    answer: HashMap<String, u16>,
    /// (browser, decrypted JSON) of every accepted push, in arrival order.
    received: Vec<(String, Value)>,
    /// Why requests were refused.
    refused: Vec<String>,
    /// Requests per browser, accepted or not.
    requests: HashMap<String, usize>,
}

#[derive(Clone)]
pub struct PushServer {
    pub origin: String,
    /// The application server key the browsers subscribe with.
    server_key: String,
    inner: Arc<Mutex<Inner>>,
}

impl PushServer {
    /// Starts on port 0, accepting tokens signed by `server_key` (base64url, uncompressed).
    pub async fn start(server_key: &str) -> PushServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let server = PushServer {
            origin,
            server_key: server_key.to_owned(),
            inner: Arc::default(),
        };
        let app = Router::new()
            .route("/push/{browser}", post(receive))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    /// A new browser; the JSON its `PushSubscription.toJSON()` would give.
    pub fn browser(&self, name: &str) -> Value {
        let b = Browser::new();
        let sub = json!({
            "endpoint": format!("{}/push/{name}", self.origin),
            "expirationTime": null,
            "keys": {
                "p256dh": URL_SAFE_NO_PAD.encode(b.secret.public_key().to_encoded_point(false).as_bytes()),
                "auth": URL_SAFE_NO_PAD.encode(b.auth),
            }
        });
        self.inner
            .lock()
            .unwrap()
            .browsers
            .insert(name.to_owned(), b);
        sub
    }

    /// From now on, `browser`'s endpoint answers `status`.
    pub fn answer(&self, browser: &str, status: u16) {
        self.inner
            .lock()
            .unwrap()
            .answer
            .insert(browser.to_owned(), status);
    }

    /// What `browser` received, decrypted, in order.
    pub fn received(&self, browser: &str) -> Vec<Value> {
        let inner = self.inner.lock().unwrap();
        assert!(inner.refused.is_empty(), "refused: {:?}", inner.refused);
        inner
            .received
            .iter()
            .filter(|(b, _)| b == browser)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Requests made to `browser`'s endpoint, whatever the answer.
    pub fn requests(&self, browser: &str) -> usize {
        self.inner
            .lock()
            .unwrap()
            .requests
            .get(browser)
            .copied()
            .unwrap_or(0)
    }
}

async fn receive(
    State(s): State<PushServer>,
    Path(browser): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut inner = s.inner.lock().unwrap();
    *inner.requests.entry(browser.clone()).or_default() += 1;
    if let Some(status) = inner.answer.get(&browser) {
        return StatusCode::from_u16(*status).unwrap();
    }
    match check(&s, &inner, &browser, &headers, &body) {
        Ok(payload) => {
            inner.received.push((browser, payload));
            StatusCode::CREATED
        }
        Err(why) => {
            inner.refused.push(format!("{browser}: {why}"));
            StatusCode::FORBIDDEN
        }
    }
}

fn check(
    s: &PushServer,
    inner: &Inner,
    browser: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, String> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if header("content-encoding") != "aes128gcm" {
        return Err(format!("content-encoding {:?}", header("content-encoding")));
    }
    if header("ttl").parse::<u64>().is_err() {
        return Err("no TTL".into());
    }
    // RFC 8292 §3: `vapid t=<JWT>, k=<public key>`.
    let (t, k) = header("authorization")
        .strip_prefix("vapid t=")
        .and_then(|r| r.split_once(", k="))
        .ok_or("no vapid authorization")?;
    if k != s.server_key {
        return Err("k is not the key the browser subscribed with".into());
    }
    let point = URL_SAFE_NO_PAD.decode(k).map_err(|e| e.to_string())?;
    let key = jsonwebtoken::DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(&point[1..33]),
        &URL_SAFE_NO_PAD.encode(&point[33..]),
    )
    .map_err(|e| e.to_string())?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[&s.origin]);
    v.set_required_spec_claims(&["exp", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(t, &key, &v)
        .map_err(|e| format!("token: {e}"))?
        .claims;
    let exp = claims["exp"].as_u64().unwrap_or(0);
    let now = kit::db::now_ms() as u64 / 1000;
    if exp > now + 24 * 3600 {
        return Err("exp more than 24 hours ahead".into());
    }
    if !claims["sub"]
        .as_str()
        .is_some_and(|s| s.starts_with("mailto:") || s.starts_with("https:"))
    {
        return Err(format!("sub {}", claims["sub"]));
    }
    let b = inner.browsers.get(browser).ok_or("no such browser")?;
    let auth = web_push_native::Auth::clone_from_slice(&b.auth);
    let plain = web_push_native::decrypt(body.to_vec(), &b.secret, &auth)
        .map_err(|e| format!("decrypting: {e}"))?;
    serde_json::from_slice(&plain).map_err(|e| format!("payload: {e}"))
}
