//! The web push channel: RFC 8030 delivery, RFC 8291 message encryption (aes128gcm) and
//! RFC 8292 VAPID, with no vendor in between.
//!
//! A browser's service worker subscribes with `pushManager.subscribe`, giving the
//! application server key from `GET /notifications/push-key`, and the page posts the
//! `PushSubscription` it gets (`JSON.stringify(subscription)`) to
//! `POST /notifications/push-subscriptions`. Each notification for a user is then queued
//! once per subscription of theirs, so one device's failure never holds back another's. The
//! worker encrypts a small JSON payload to the subscription's keys (`web-push-native`),
//! signs a VAPID token (ES256, `jsonwebtoken`) for the push service's origin and POSTs it.
//! A 404 or 410 from the push service means the browser dropped the subscription: it is
//! deleted and the delivery dropped with that reason.
//!
//! The VAPID key is kept like the user service keeps its signing key: `VAPID_PRIVATE_KEY`
//! (PEM), `VAPID_PRIVATE_KEY_FILE`, or `<DATA_DIR>/notification-vapid-key.pem` made on first
//! start. It must not change while subscriptions exist: browsers bind a subscription to it.
//!
//! FCM and APNs native pushes are out of scope: an embedder adds them as another
//! [`ChannelSender`].

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use kit::db::{new_id, now_ms};
use kit::Db;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};
use web_push_native::Auth;

use crate::catalog::{kind, Category, Channel, Templates};
use crate::channel::ChannelSender;
use crate::queue::{Delivery, Outcome};

/// The application server's key pair (P-256) that signs VAPID tokens.
#[derive(Clone)]
pub struct VapidKey {
    pem: String,
    signing: jsonwebtoken::EncodingKey,
    public: String,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl VapidKey {
    /// A new random key.
    pub fn generate() -> VapidKey {
        use rand::RngCore;
        loop {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            // A scalar of zero or ≥ the group order (odds ~2^-32) is not a key: draw again.
            if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
                return VapidKey::from_secret(&secret).expect("a fresh P-256 key encodes");
            }
        }
    }

    /// A key from PKCS#8 PEM (`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`,
    /// or [`Self::to_pem`]).
    pub fn from_pem(pem: &str) -> Result<VapidKey, String> {
        let secret = p256::SecretKey::from_pkcs8_pem(pem.trim())
            .map_err(|e| format!("not a P-256 private key in PKCS#8 PEM: {e}"))?;
        VapidKey::from_secret(&secret)
    }

    fn from_secret(secret: &p256::SecretKey) -> Result<VapidKey, String> {
        let pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?
            .to_string();
        let signing =
            jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        let public = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes());
        Ok(VapidKey {
            pem,
            signing,
            public,
        })
    }

    /// The private key as PKCS#8 PEM.
    pub fn to_pem(&self) -> &str {
        &self.pem
    }

    /// The public key, uncompressed and base64url: what a page gives `pushManager.subscribe`
    /// as `applicationServerKey`, and the `k` of every request.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The `Authorization` value for a request to `endpoint` (RFC 8292): a token for the
    /// endpoint's origin, valid for `valid`, naming `subject` as the contact.
    pub fn authorization(
        &self,
        endpoint: &reqwest::Url,
        subject: &str,
        valid: Duration,
    ) -> Result<String, String> {
        #[derive(Serialize)]
        struct Claims<'a> {
            aud: String,
            exp: u64,
            sub: &'a str,
        }
        let claims = Claims {
            aud: endpoint.origin().ascii_serialization(),
            exp: (now_ms() as u64) / 1000 + valid.as_secs(),
            sub: subject,
        };
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        let token =
            jsonwebtoken::encode(&header, &claims, &self.signing).map_err(|e| e.to_string())?;
        Ok(format!("vapid t={token}, k={}", self.public))
    }
}

/// What `POST /notifications/push-subscriptions` takes: a browser's `PushSubscription` as
/// `JSON.stringify` gives it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({
    "endpoint": "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABn…",
    "expirationTime": null,
    "keys": {"p256dh": "BLn9b-VR0ca83knDNZ32dCHGyjJp-1riX9ZTN40MqV8K_LpQmLqxC_DoHvqvFXO_nGdAB4W9dogZb_sM-uV4JbY",
             "auth": "_ordMnz7uTCmrpBTeUV4Bw"}
}))]
#[serde(rename_all = "camelCase")]
pub struct NewSubscription {
    /// The push service's URL for this browser (https).
    pub endpoint: String,
    /// When the browser will end it (Unix ms), if it says.
    #[serde(default)]
    pub expiration_time: Option<i64>,
    /// The browser's keys.
    pub keys: SubscriptionKeys,
}

/// A subscription's keys, base64url as the browser gives them.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct SubscriptionKeys {
    /// The browser's P-256 public key (65 bytes, uncompressed).
    pub p256dh: String,
    /// The shared authentication secret (16 bytes).
    pub auth: String,
}

/// A stored subscription as its owner sees it (never the keys).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "01a246f2-62f6-7316-a269-45fc609fd9c5",
    "endpoint": "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABn…",
    "created_at": 1796486619894_i64
}))]
pub struct Subscription {
    /// Its id.
    pub id: String,
    /// The push service's URL.
    pub endpoint: String,
    /// Unix ms.
    pub created_at: i64,
}

/// The most subscriptions one user keeps; a newer one pushes out the oldest (browsers
/// re-subscribe and do not always say goodbye).
pub const MAX_PER_USER: i64 = 32;

/// Why a subscription is refused, with the field at fault.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    /// The JSON path (`endpoint`, `keys.p256dh`…).
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn refused(field: &'static str, reason: impl Into<String>) -> Refused {
    Refused {
        field,
        reason: reason.into(),
    }
}

/// Checks `s`: an https endpoint (or http when `allow_http`, for tests and local push
/// servers) without credentials, a P-256 point and a 16-byte secret.
pub fn check(s: &NewSubscription, allow_http: bool) -> Result<(), Refused> {
    if s.endpoint.len() > 2048 {
        return Err(refused("endpoint", "longer than 2048 characters"));
    }
    let url = reqwest::Url::parse(&s.endpoint)
        .map_err(|e| refused("endpoint", format!("not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        _ => return Err(refused("endpoint", "must be an https URL")),
    }
    if url.host().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err(refused("endpoint", "must name a host and no credentials"));
    }
    public_key(&s.keys.p256dh)
        .map_err(|why| refused("keys.p256dh", why))
        .and_then(|_| auth_secret(&s.keys.auth).map_err(|why| refused("keys.auth", why)))?;
    Ok(())
}

fn decode(s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| "not base64url".to_owned())
}

fn public_key(s: &str) -> Result<p256::PublicKey, String> {
    let bytes = decode(s)?;
    if bytes.len() != 65 {
        return Err(format!(
            "{} bytes; an uncompressed P-256 key has 65",
            bytes.len()
        ));
    }
    p256::PublicKey::from_sec1_bytes(&bytes).map_err(|_| "not a point on P-256".to_owned())
}

fn auth_secret(s: &str) -> Result<Auth, String> {
    let bytes = decode(s)?;
    if bytes.len() != 16 {
        return Err(format!("{} bytes; the secret has 16", bytes.len()));
    }
    Ok(Auth::clone_from_slice(&bytes))
}

/// Stores `s` for `user`; the endpoint is the browser's identity, so posting it again
/// (from the same or another account on that browser) moves it rather than doubling it.
/// Returns the stored subscription and whether it is new.
pub async fn subscribe(
    db: &Db,
    user: &str,
    s: &NewSubscription,
) -> Result<(Subscription, bool), kit::DbError> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    let existing = sqlx::query("SELECT id, created_at FROM push_subscriptions WHERE endpoint = $1")
        .bind(&s.endpoint)
        .fetch_optional(&mut *tx)
        .await?;
    let (id, created_at, new) = match existing {
        Some(row) => {
            let id: String = row.try_get("id")?;
            sqlx::query(
                "UPDATE push_subscriptions SET user_id = $1, p256dh = $2, auth = $3, \
                 updated_at = $4 WHERE id = $5",
            )
            .bind(user)
            .bind(&s.keys.p256dh)
            .bind(&s.keys.auth)
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            (id, row.try_get("created_at")?, false)
        }
        None => {
            let id = new_id();
            sqlx::query(
                "INSERT INTO push_subscriptions (id, user_id, endpoint, p256dh, auth, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
            )
            .bind(&id)
            .bind(user)
            .bind(&s.endpoint)
            .bind(&s.keys.p256dh)
            .bind(&s.keys.auth)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            (id, now, true)
        }
    };
    sqlx::query(
        "DELETE FROM push_subscriptions WHERE user_id = $1 AND id NOT IN \
         (SELECT id FROM push_subscriptions WHERE user_id = $1 \
          ORDER BY updated_at DESC, id DESC LIMIT $2)",
    )
    .bind(user)
    .bind(MAX_PER_USER)
    .execute(&mut *tx)
    .await?;
    tx.commit().await.map_err(kit::DbError::from)?;
    let sub = Subscription {
        id,
        endpoint: s.endpoint.clone(),
        created_at,
    };
    Ok((sub, new))
}

/// `user`'s subscriptions, oldest first.
pub async fn list(db: &Db, user: &str) -> Result<Vec<Subscription>, kit::DbError> {
    let rows = sqlx::query(
        "SELECT id, endpoint, created_at FROM push_subscriptions WHERE user_id = $1 \
         ORDER BY created_at, id",
    )
    .bind(user)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Subscription {
                id: r.try_get("id")?,
                endpoint: r.try_get("endpoint")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(kit::DbError::from)
}

/// Deletes `user`'s subscription `id`; `false` when they have none by that id.
pub async fn unsubscribe(db: &Db, user: &str, id: &str) -> Result<bool, kit::DbError> {
    let done = sqlx::query("DELETE FROM push_subscriptions WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The ids of `user`'s subscriptions, inside the consumer's transaction (one delivery each).
pub async fn recipients(
    tx: &mut Transaction<'static, Any>,
    user: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM push_subscriptions WHERE user_id = $1")
        .bind(user)
        .fetch_all(&mut **tx)
        .await
}

/// How the push channel sends.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// The VAPID key.
    pub key: VapidKey,
    /// The contact the push services see (`mailto:` or `https:`).
    pub subject: String,
    /// Accept `http://` endpoints (tests, a push server on the local network).
    pub allow_http: bool,
    /// How long a push service keeps a message for a browser that is offline.
    pub ttl: Duration,
}

/// What a browser's service worker receives (decrypted), as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PushPayload {
    /// The in-app notification's id (to open or mark it read), when there is one.
    pub id: Option<String>,
    /// Its kind.
    pub kind: String,
    /// Its category.
    pub category: Category,
    /// One line.
    pub title: String,
    /// A sentence or two.
    pub body: String,
}

/// Web push through `reqwest`.
pub struct PushSender {
    db: Db,
    settings: PushSettings,
    templates: Arc<Templates>,
    http: reqwest::Client,
}

impl PushSender {
    /// A sender reading subscriptions from `db`.
    pub fn new(db: Db, settings: PushSettings, templates: Arc<Templates>) -> PushSender {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a TLS client builds");
        PushSender {
            db,
            settings,
            templates,
            http,
        }
    }

    async fn request(&self, d: &Delivery) -> Result<(reqwest::Url, Request), Outcome> {
        let kind = kind(&d.kind).ok_or_else(|| Outcome::Dropped(format!("no kind {}", d.kind)))?;
        let unreadable = |e: sqlx::Error| Outcome::Retry(format!("reading the subscription: {e}"));
        let row = sqlx::query(
            "SELECT s.endpoint, s.p256dh, s.auth, n.id AS notification FROM push_subscriptions s \
             LEFT JOIN notifications n ON n.event_id = $2 AND n.user_id = s.user_id \
             WHERE s.id = $1",
        )
        .bind(&d.recipient)
        .bind(&d.event_id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(unreadable)?
        .ok_or_else(|| Outcome::Dropped("the subscription was removed".into()))?;
        let endpoint: String = row.try_get("endpoint").map_err(unreadable)?;
        let p256dh: String = row.try_get("p256dh").map_err(unreadable)?;
        let auth: String = row.try_get("auth").map_err(unreadable)?;
        let url = reqwest::Url::parse(&endpoint)
            .map_err(|e| Outcome::Permanent(format!("endpoint: {e}")))?;
        let (title, body) = self
            .templates
            .in_app(kind, &d.data)
            .map_err(|e| Outcome::Dropped(e.to_string()))?;
        let payload = PushPayload {
            id: row.try_get("notification").map_err(unreadable)?,
            kind: kind.name.to_owned(),
            category: kind.category,
            title,
            body,
        };
        let json = serde_json::to_vec(&payload).map_err(|e| Outcome::Dropped(e.to_string()))?;
        let ua_public = public_key(&p256dh).map_err(Outcome::Permanent)?;
        let ua_auth = auth_secret(&auth).map_err(Outcome::Permanent)?;
        let body = web_push_native::encrypt(json, &ua_public, &ua_auth)
            .map_err(|e| Outcome::Permanent(format!("encrypting: {e}")))?;
        let authorization = self
            .settings
            .key
            .authorization(&url, &self.settings.subject, Duration::from_secs(12 * 3600))
            .map_err(|e| Outcome::Permanent(format!("signing the VAPID token: {e}")))?;
        let urgency = if kind.category.optional() {
            "normal"
        } else {
            "high"
        };
        Ok((
            url,
            Request {
                body,
                authorization,
                urgency,
            },
        ))
    }

    async fn forget(&self, id: &str) {
        if let Err(e) = sqlx::query("DELETE FROM push_subscriptions WHERE id = $1")
            .bind(id)
            .execute(self.db.pool())
            .await
        {
            tracing::warn!(subscription = id, error = %e, "push: expired subscription not deleted");
        }
    }
}

struct Request {
    body: Vec<u8>,
    authorization: String,
    urgency: &'static str,
}

#[async_trait::async_trait]
impl ChannelSender for PushSender {
    fn channel(&self) -> Channel {
        Channel::PUSH
    }

    /// Each browser `user` subscribed.
    async fn recipients(
        &self,
        tx: &mut Transaction<'static, Any>,
        user: &str,
    ) -> Result<Vec<String>, kit::bus::BoxError> {
        Ok(recipients(tx, user).await?)
    }

    async fn send(&self, d: &Delivery) -> Outcome {
        let (url, req) = match self.request(d).await {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let sent = self
            .http
            .post(url)
            .header("TTL", self.settings.ttl.as_secs().to_string())
            .header("Urgency", req.urgency)
            .header(reqwest::header::CONTENT_ENCODING, "aes128gcm")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::AUTHORIZATION, req.authorization)
            .body(req.body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return Outcome::Retry(format!("push service: {e}")),
        };
        let status = response.status();
        if status.is_success() {
            return Outcome::Sent;
        }
        let why = format!(
            "push service answered {status}: {}",
            response
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect::<String>()
        );
        match status.as_u16() {
            // The browser unsubscribed or the subscription expired (RFC 8030 §7.3).
            404 | 410 => {
                self.forget(&d.recipient).await;
                Outcome::Dropped(format!("{why}; the subscription is deleted"))
            }
            408 | 429 => Outcome::Retry(why),
            s if s >= 500 => Outcome::Retry(why),
            _ => Outcome::Permanent(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(endpoint: &str, p256dh: &str, auth: &str) -> NewSubscription {
        NewSubscription {
            endpoint: endpoint.into(),
            expiration_time: None,
            keys: SubscriptionKeys {
                p256dh: p256dh.into(),
                auth: auth.into(),
            },
        }
    }

    const P256DH: &str =
        "BLn9b-VR0ca83knDNZ32dCHGyjJp-1riX9ZTN40MqV8K_LpQmLqxC_DoHvqvFXO_nGdAB4W9dogZb_sM-uV4JbY";
    const AUTH: &str = "_ordMnz7uTCmrpBTeUV4Bw";

    #[test]
    fn a_subscription_needs_an_https_endpoint_a_p256_key_and_a_16_byte_secret() {
        let ok = |e: &str, k: &str, a: &str| check(&subscription(e, k, a), false);
        assert_eq!(ok("https://push.example/x", P256DH, AUTH), Ok(()));
        let field = |r: Result<(), Refused>| r.unwrap_err().field;
        assert_eq!(field(ok("http://push.example/x", P256DH, AUTH)), "endpoint");
        assert_eq!(
            field(ok("https://u:p@push.example/x", P256DH, AUTH)),
            "endpoint"
        );
        assert_eq!(field(ok("not a url", P256DH, AUTH)), "endpoint");
        assert_eq!(
            field(ok("https://push.example/x", &P256DH[..40], AUTH)),
            "keys.p256dh"
        );
        let off_curve = format!("BA{}", &P256DH[2..]);
        assert_eq!(
            field(ok("https://push.example/x", &off_curve, AUTH)),
            "keys.p256dh"
        );
        assert_eq!(
            field(ok("https://push.example/x", P256DH, "c2hvcnQ")),
            "keys.auth"
        );
        assert_eq!(
            check(&subscription("http://127.0.0.1:9/x", P256DH, AUTH), true),
            Ok(())
        );
    }

    #[test]
    fn the_vapid_token_is_for_the_endpoints_origin_and_verifies_with_k() {
        let key = VapidKey::generate();
        let again = VapidKey::from_pem(key.to_pem()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let url = reqwest::Url::parse("http://127.0.0.1:8123/push/abc?x=1").unwrap();
        let header = key
            .authorization(&url, "mailto:ops@shop.example", Duration::from_secs(3600))
            .unwrap();
        let (t, k) = header
            .strip_prefix("vapid t=")
            .and_then(|r| r.split_once(", k="))
            .unwrap();
        assert_eq!(k, key.public_key());
        let point = URL_SAFE_NO_PAD.decode(k).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_ec_components(
            &URL_SAFE_NO_PAD.encode(&point[1..33]),
            &URL_SAFE_NO_PAD.encode(&point[33..]),
        )
        .unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&["http://127.0.0.1:8123"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(t, &decoding, &v)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "mailto:ops@shop.example");
        assert!(
            VapidKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
                .is_err()
        );
    }
}
