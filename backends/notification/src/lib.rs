//! The notification service: what happens in the shop, told to the people concerned.
//!
//! It consumes the other services' domain events (one durable consumer through the kit's
//! bus and inbox, so a redelivered event is seen once) and, per event:
//!
//! - [`catalog`]: decides who hears of it, in which category, with which words (minijinja
//!   templates, HTML auto-escaped);
//! - [`intake`]: stores an in-app notification per user (the inbox, `GET /notifications`)
//!   and enqueues one email per recipient, in the consumer's transaction;
//! - [`queue`] + [`worker`]: a durable queue, one row per (event, channel, recipient),
//!   claimed under a lease, retried with exponential backoff and jitter, dead-lettered
//!   after `MAX_ATTEMPTS` (admins list and re-queue dead letters);
//! - [`email`]: lettre over SMTP, or `.eml` files under the data folder when no server is
//!   configured; RFC 8058 one-click unsubscribe links signed by [`unsubscribe`];
//! - [`preferences`]: per user, category and channel, honoured at intake (in-app) and again
//!   just before sending (email); security notices cannot be turned off.
//!
//! - [`push`]: web push to every browser a user subscribed (RFC 8030/8291/8292: VAPID,
//!   aes128gcm), one delivery per subscription; a subscription the push service says is
//!   gone is deleted;
//! - [`live`]: the caller's notifications over a WebSocket, replaying what a reconnecting
//!   client missed, only to the recipient, with a bounded queue per connection.
//!
//! FCM, APNs and SMS are not built in: an embedder adds a channel (or replaces email or
//! push) by implementing [`ChannelSender`] and passing it to [`Service::start`].

pub mod api;
pub mod catalog;
pub mod channel;
pub mod email;
pub mod error;
pub mod intake;
pub mod live;
pub mod metrics;
pub mod preferences;
pub mod push;
pub mod queue;
pub mod unsubscribe;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use axum::Router;
use kit::config::{ConfigError, Setting};
use kit::inbox::ConsumerOptions;
use kit::{Consumer, Db, Env, EventBus, ServiceConfig, Telemetry, Verifier};
use sqlx::migrate::Migrator;
use tokio::sync::Notify;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use channel::ChannelSender;
pub use error::Error;

use catalog::{Channel, Templates};
use email::{EmailSender, MailTarget};
use push::{PushSender, PushSettings, VapidKey};
use queue::RetryPolicy;
use unsubscribe::Signer;
use worker::Worker;

/// The service's migrations (versions from 1000; the kit's run with them).
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Runs the kit's and the service's migrations.
pub async fn migrate(db: &Db) -> Result<(), kit::DbError> {
    db.migrate(&MIGRATIONS).await
}

/// The durable consumer's name (one cursor shared by every replica).
pub const CONSUMER: &str = "notification";

/// How the service behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where email goes.
    pub mail: MailTarget,
    /// The sender, `Name <address>`; its domain makes the `Message-ID`s.
    pub mail_from: String,
    /// Where links in messages point (the gateway's public address).
    pub public_url: String,
    /// Operators who get stock notices by email.
    pub admin_emails: Vec<String>,
    /// Retries, backoff and lease of the queue.
    pub retry: RetryPolicy,
    /// How often the worker looks for due deliveries when nothing wakes it.
    pub poll_interval: Duration,
    /// Deliveries in flight at once (per replica).
    pub concurrency: usize,
    /// The key that signs unsubscribe links (made and kept in the data folder by default).
    pub link_key: Vec<u8>,
    /// Web push: the VAPID key and contact.
    pub push: PushSettings,
}

impl Settings {
    /// Settings for tests and embedders: mail to files in `dir`, a fixed link key.
    pub fn to_files(dir: PathBuf) -> Settings {
        Settings {
            mail: MailTarget::Files(dir),
            mail_from: "Gatehouse shop <no-reply@shop.example>".into(),
            public_url: "http://localhost:8080".into(),
            admin_emails: Vec::new(),
            retry: RetryPolicy::default(),
            poll_interval: Duration::from_millis(500),
            concurrency: 8,
            link_key: vec![0x5a; 32],
            push: PushSettings {
                key: VapidKey::generate(),
                subject: "mailto:no-reply@shop.example".into(),
                allow_http: false,
                ttl: Duration::from_secs(24 * 3600),
            },
        }
    }

    /// The settings `env` gives, with `data_dir` for the defaults.
    pub fn read(env: &Env, data_dir: &std::path::Path) -> Result<Settings, ConfigError> {
        let d = Settings::to_files(data_dir.join("mail"));
        let mail = match env.string("SMTP_URL") {
            Some(url) => MailTarget::Smtp {
                url,
                credentials: env.string("SMTP_USERNAME").zip(env.string("SMTP_PASSWORD")),
            },
            None => d.mail,
        };
        let retry = RetryPolicy {
            max_attempts: env.count("MAX_ATTEMPTS")?.unwrap_or(d.retry.max_attempts),
            base: env.duration("RETRY_BASE")?.unwrap_or(d.retry.base),
            max: env.duration("RETRY_MAX")?.unwrap_or(d.retry.max),
            lease: env.duration("SEND_LEASE")?.unwrap_or(d.retry.lease),
        };
        let link_key = link_key(env, data_dir)?;
        let mail_from = env.string("MAIL_FROM").unwrap_or(d.mail_from);
        let push = PushSettings {
            key: vapid_key(env, data_dir)?,
            subject: match env.string("VAPID_SUBJECT") {
                Some(s) => s,
                None => format!(
                    "mailto:{}",
                    mail_from
                        .parse::<lettre::message::Mailbox>()
                        .map_err(|_| ConfigError {
                            variable: "MAIL_FROM".into(),
                            reason: format!("{mail_from:?} is not an email address"),
                        })?
                        .email
                ),
            },
            allow_http: env
                .parse("PUSH_ALLOW_HTTP", "true or false", |v| v.parse().ok())?
                .unwrap_or(false),
            ttl: env.duration("PUSH_TTL")?.unwrap_or(d.push.ttl),
        };
        Ok(Settings {
            mail,
            mail_from,
            public_url: env.string("PUBLIC_URL").unwrap_or(d.public_url),
            admin_emails: env
                .string("ADMIN_EMAILS")
                .map(|s| {
                    s.split(',')
                        .map(|a| a.trim().to_owned())
                        .filter(|a| !a.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            retry,
            poll_interval: env.duration("POLL_INTERVAL")?.unwrap_or(d.poll_interval),
            concurrency: env
                .parse("SEND_CONCURRENCY", "a whole number from 1", |v| {
                    v.parse().ok().filter(|n: &usize| *n >= 1)
                })?
                .unwrap_or(d.concurrency),
            link_key,
            push,
        })
    }
}

/// The key that signs unsubscribe links: `LINK_KEY`, else the file `LINK_KEY_FILE`, else
/// `<DATA_DIR>/notification-link-key`, made on first start. Replicas must share it (a link
/// one signs, another checks), and it must outlive a pod's scratch folder: give it as a
/// Secret then.
fn link_key(env: &Env, data_dir: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    const SHORTEST: usize = 32;
    if let Some((variable, key)) = env.lookup("LINK_KEY") {
        if key.len() < SHORTEST {
            return Err(ConfigError {
                variable,
                reason: format!("must be at least {SHORTEST} characters"),
            });
        }
        return Ok(key.into_bytes());
    }
    let (variable, file) = match env.lookup("LINK_KEY_FILE") {
        Some((variable, path)) => (variable, PathBuf::from(path)),
        None => ("DATA_DIR".into(), data_dir.join("notification-link-key")),
    };
    let key = kit::secret::read_or_make(&file, || {
        use rand::RngCore;
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        key
    })
    .map_err(|e| ConfigError {
        variable: variable.clone(),
        reason: format!("cannot keep the link key in {}: {e}", file.display()),
    })?;
    if key.len() < SHORTEST {
        return Err(ConfigError {
            variable,
            reason: format!("{}: must hold at least {SHORTEST} bytes", file.display()),
        });
    }
    Ok(key)
}

/// The VAPID key: `VAPID_PRIVATE_KEY` (PEM), else the file `VAPID_PRIVATE_KEY_FILE`, else
/// `<DATA_DIR>/notification-vapid-key.pem`, made on first start.
fn vapid_key(env: &Env, data_dir: &std::path::Path) -> Result<VapidKey, ConfigError> {
    if let Some((variable, pem)) = env.lookup("VAPID_PRIVATE_KEY") {
        return VapidKey::from_pem(&pem).map_err(|reason| ConfigError { variable, reason });
    }
    let (variable, file) = match env.lookup("VAPID_PRIVATE_KEY_FILE") {
        Some((variable, path)) => (variable, PathBuf::from(path)),
        None => (
            "DATA_DIR".into(),
            data_dir.join("notification-vapid-key.pem"),
        ),
    };
    let pem =
        kit::secret::read_or_make(&file, || VapidKey::generate().to_pem().as_bytes().to_vec())
            .map_err(|e| ConfigError {
                variable: variable.clone(),
                reason: format!("cannot keep the VAPID key in {}: {e}", file.display()),
            })?;
    let pem = String::from_utf8_lossy(&pem);
    VapidKey::from_pem(&pem).map_err(|reason| ConfigError {
        variable,
        reason: format!("{}: {reason}", file.display()),
    })
}

/// The settings the notification service reads beyond the kit's.
pub const SETTINGS: &[Setting] = &[
    Setting::flag(
        "SMTP_URL",
        "SMTP server: smtp://host:25, smtp://host:587?tls=required, smtps://host:465 \
         (default: .eml files under <DATA_DIR>/mail)",
    ),
    Setting::env("SMTP_USERNAME", "SMTP user, when not in SMTP_URL"),
    Setting::env("SMTP_PASSWORD", "SMTP password, when not in SMTP_URL"),
    Setting::env(
        "MAIL_FROM",
        "the sender (Gatehouse shop <no-reply@shop.example>)",
    ),
    Setting::env(
        "PUBLIC_URL",
        "where links in messages point (http://localhost:8080)",
    ),
    Setting::env(
        "ADMIN_EMAILS",
        "comma-separated operators who get low-stock notices",
    ),
    Setting::env(
        "MAX_ATTEMPTS",
        "attempts before a message is dead-lettered (8)",
    ),
    Setting::env(
        "RETRY_BASE",
        "wait after the first failure, doubled each time (2s)",
    ),
    Setting::env("RETRY_MAX", "longest wait between attempts (15m)"),
    Setting::env(
        "SEND_LEASE",
        "how long a claimed message is held by one worker (60s)",
    ),
    Setting::env(
        "POLL_INTERVAL",
        "how often the queue is read when nothing wakes it (500ms)",
    ),
    Setting::env(
        "SEND_CONCURRENCY",
        "deliveries in flight at once, per replica (8)",
    ),
    Setting::env(
        "LINK_KEY",
        "the key signing unsubscribe links, 32 characters or more; replicas share it \
         (default: made and kept in the data folder)",
    ),
    Setting::env(
        "LINK_KEY_FILE",
        "a file with the link key (<DATA_DIR>/notification-link-key)",
    ),
    Setting::env(
        "VAPID_PRIVATE_KEY",
        "web push: the VAPID key, P-256 PKCS#8 PEM (default: made and kept in the data folder)",
    ),
    Setting::env(
        "VAPID_PRIVATE_KEY_FILE",
        "web push: a file with the VAPID key (<DATA_DIR>/notification-vapid-key.pem)",
    ),
    Setting::env(
        "VAPID_SUBJECT",
        "web push: the contact push services see (mailto: the MAIL_FROM address)",
    ),
    Setting::env(
        "PUSH_ALLOW_HTTP",
        "web push: accept http:// push endpoints, for a local push server (false)",
    ),
    Setting::env(
        "PUSH_TTL",
        "web push: how long a push service holds a message for an offline browser (24h)",
    ),
];

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// Verifies callers' access tokens.
    pub verifier: Arc<Verifier>,
    /// Signs and checks unsubscribe links.
    pub signer: Signer,
    /// Wakes the worker (a re-queue).
    pub wake: Arc<Notify>,
    /// The bus, when the service runs (checked by `/ready`).
    pub bus: Option<Arc<dyn EventBus>>,
    /// Queue depth and send attempts, on `/metrics`.
    pub metrics: metrics::Metrics,
    /// Live WebSocket connections.
    pub hub: Arc<live::Hub>,
    /// The VAPID public key (base64url), for `GET /notifications/push-key`.
    pub push_key: String,
    /// Whether http:// push endpoints are accepted.
    pub push_allow_http: bool,
    /// Every channel: the built-in ones and those the embedder added.
    pub channels: Arc<[Channel]>,
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(s: &AppState) -> Arc<Verifier> {
        s.verifier.clone()
    }
}

/// The notification service running: the consumer and the worker.
pub struct Service {
    /// What the router serves.
    pub state: AppState,
    consumer: Consumer,
    worker: Worker,
    fanout: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Migrates `db`, subscribes the consumer and starts the worker with the email and push
    /// channels and `extra` senders (each replaces a built-in channel's sender or adds a
    /// channel: see [`ChannelSender`]).
    pub async fn start(
        db: Db,
        settings: Settings,
        verifier: Arc<Verifier>,
        bus: Arc<dyn EventBus>,
        extra: Vec<Arc<dyn ChannelSender>>,
    ) -> anyhow::Result<Service> {
        migrate(&db).await?;
        let templates = Arc::new(Templates::default());
        let signer = Signer::new(settings.link_key.clone());
        let wake = Arc::new(Notify::new());
        let email = EmailSender::new(
            &settings.mail,
            &settings.mail_from,
            &settings.public_url,
            templates.clone(),
            signer.clone(),
        )?;
        let push: Arc<dyn ChannelSender> = Arc::new(PushSender::new(
            db.clone(),
            settings.push.clone(),
            templates.clone(),
        ));
        // The intake asks push and the embedder's own channels who a user's recipients are
        // (push's, also when an embedder's sender replaces the built-in one for sending).
        let mut named = vec![push.clone()];
        named.extend(
            extra
                .iter()
                .filter(|s| !Channel::BUILT_IN.contains(&s.channel()))
                .cloned(),
        );
        let mut channels = Channel::BUILT_IN.to_vec();
        for s in &named {
            if !channels.contains(&s.channel()) {
                channels.push(s.channel());
            }
        }
        // The embedder's first: the worker takes the first sender for a channel.
        let mut senders = extra;
        senders.push(Arc::new(email));
        senders.push(push);
        let fanout_wake = Arc::new(Notify::new());
        let consumer = Consumer::spawn(
            db.clone(),
            bus.clone(),
            CONSUMER,
            intake::PATTERN,
            intake::Intake {
                admins: settings.admin_emails.clone(),
                templates,
                wake: wake.clone(),
                live: fanout_wake.clone(),
                named,
            },
            ConsumerOptions::for_service(<Self as kit::Service>::NAME),
        )
        .await?;
        let metrics = metrics::Metrics::default();
        let worker = Worker::spawn(
            db.clone(),
            senders,
            settings.retry.clone(),
            settings.poll_interval,
            settings.concurrency,
            wake.clone(),
            metrics.clone(),
        );
        let hub = Arc::new(live::Hub::new(metrics.websocket_clients.clone()));
        let fanout = live::spawn_fanout(
            db.clone(),
            hub.clone(),
            fanout_wake,
            Duration::from_millis(250),
        );
        Ok(Service {
            state: AppState {
                db,
                verifier,
                signer,
                wake,
                bus: Some(bus),
                metrics,
                hub,
                push_key: settings.push.key.public_key().to_owned(),
                push_allow_http: settings.push.allow_http,
                channels: channels.into(),
            },
            consumer,
            worker,
            fanout,
        })
    }
}

impl kit::Service for Service {
    const NAME: &'static str = "notification";
    const PORT: u16 = 3005;
    const ABOUT: &'static str =
        "Gatehouse notification service: in-app inbox, email and web push from the shop's events";
    const SETTINGS: &'static [Setting] = SETTINGS;
    type Settings = Settings;

    fn settings(env: &Env, config: &ServiceConfig) -> Result<Settings, ConfigError> {
        Settings::read(env, &config.data_dir)
    }

    async fn start(ctx: kit::service::Start, settings: Settings) -> anyhow::Result<Service> {
        let verifier = ctx.verifier();
        Service::start(ctx.db, settings, verifier, ctx.bus, Vec::new()).await
    }

    fn router(&self) -> Router {
        router(self.state.clone())
    }

    fn openapi() -> utoipa::openapi::OpenApi {
        openapi()
    }

    /// Stops taking events, then sending (after the message in hand).
    async fn shutdown(self) {
        self.consumer.shutdown().await;
        self.worker.shutdown().await;
        self.fanout.abort();
    }
}

/// The HTTP surface, with `/health`, `/ready` and `/metrics`.
pub fn router(state: AppState) -> Router {
    let telemetry = Telemetry::for_service("notification", &state.db, state.bus.as_ref());
    state.metrics.register(telemetry.registry());
    let (db, gauge) = (state.db.clone(), state.metrics.oldest_due_age.clone());
    telemetry.on_scrape(move || {
        let (db, gauge) = (db.clone(), gauge.clone());
        async move {
            let now = kit::db::now_ms();
            if let Ok(oldest) = queue::oldest_due(&db, now).await {
                gauge.set(oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0));
            }
        }
    });
    let (api, doc) = api().split_for_parts();
    let api = api
        .with_state(state)
        .merge(kit::openapi::serve(&finish(doc)));
    telemetry.wrap(api)
}

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(api::list))
        .routes(routes!(live::stream))
        .routes(routes!(api::unread_count))
        .routes(routes!(api::mark_read))
        .routes(routes!(api::mark_all_read))
        .routes(routes!(api::get_preferences, api::set_preferences))
        .routes(routes!(api::unsubscribe_page, api::unsubscribe))
        .routes(routes!(api::push_key))
        .routes(routes!(api::subscribe_push, api::list_push))
        .routes(routes!(api::unsubscribe_push))
        .routes(routes!(api::dead_letters))
        .routes(routes!(api::requeue))
}

fn finish(doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    kit::openapi::finish(doc, "notification", <Service as kit::Service>::ABOUT)
}

/// The service's OpenAPI document, as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    finish(api().into_openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup("notification", move |k| {
            pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    /// Replicas sign and check each other's unsubscribe links: the key comes from a setting
    /// or a file they share, or is made once in the data folder and kept.
    #[test]
    fn the_link_key_comes_from_the_setting_a_file_or_the_data_folder() {
        let dir = tempfile::tempdir().unwrap();
        let given = "a-link-key-of-at-least-thirty-two-characters";
        let read = |pairs: &[(&str, &str)]| Settings::read(&env(pairs), dir.path());
        assert_eq!(
            read(&[("LINK_KEY", given)]).unwrap().link_key,
            given.as_bytes()
        );
        let e = read(&[("NOTIFICATION_LINK_KEY", "short")]).err().unwrap();
        assert_eq!(e.variable, "NOTIFICATION_LINK_KEY");

        let file = dir.path().join("mounted-key");
        std::fs::write(&file, [7u8; 48]).unwrap();
        let path = file.display().to_string();
        assert_eq!(
            read(&[("LINK_KEY_FILE", &path)]).unwrap().link_key,
            [7u8; 48]
        );

        let made = read(&[]).unwrap().link_key;
        assert_eq!(made.len(), 32);
        assert_eq!(read(&[]).unwrap().link_key, made, "kept, not made again");
    }
}
