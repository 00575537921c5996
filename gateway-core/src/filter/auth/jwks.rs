//! A JWKS key set fetched over HTTP and kept fresh in the background.
//!
//! - Nothing is fetched when the filter is built (`gateway check` builds filters outside any
//!   runtime and must not touch the network). The first request that needs keys fetches them
//!   and starts the refresher task on the runtime serving it.
//! - The refresher holds only a `Weak` reference and is woken on `Drop`, so a filter dropped by
//!   a reload stops refreshing at once.
//! - A token naming an unknown `kid` triggers a refresh, at most once per `min_refresh`;
//!   concurrent requests wait for the same fetch instead of each fetching.
//! - A failed refresh keeps the last good key set serving. Until a key set has ever been
//!   obtained, requests are answered 503 (the gateway cannot judge tokens), not 401.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::Algorithm;
use tokio::sync::Notify;

use super::cache::{digest, TokenDigest};
use super::keys::{KeyEntry, KeySet};
use super::reject::Rejection;
use crate::observe::metrics::shared;

/// JWKS documents larger than this are refused (a JWKS holds a handful of keys).
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Settings of a [`Jwks`].
pub(crate) struct JwksSettings {
    /// The filter's name, for its metrics.
    pub filter: String,
    pub url: String,
    pub algorithms: Vec<Algorithm>,
    pub refresh: Duration,
    pub min_refresh: Duration,
    pub timeout: Duration,
}

#[derive(Default)]
struct FetchState {
    /// When the last fetch started (successful or not).
    last_attempt: Option<Instant>,
    /// Digest of the last document installed: an identical document keeps the generation, so
    /// cached tokens stay valid.
    installed: Option<TokenDigest>,
}

/// A key set fetched from a JWKS URL.
pub(crate) struct Jwks {
    settings: JwksSettings,
    client: reqwest::Client,
    keys: ArcSwapOption<KeySet>,
    generation: AtomicU64,
    state: Mutex<FetchState>,
    /// Held across a fetch so concurrent callers share one.
    fetching: tokio::sync::Mutex<()>,
    refresher_started: AtomicBool,
    stop: Arc<Notify>,
    fetches: AtomicU64,
}

impl Drop for Jwks {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

impl Jwks {
    /// A key set that fetches from `settings.url` on first use.
    pub fn new(settings: JwksSettings) -> Result<Jwks, String> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent("gatehouse-jwks")
            .build()
            .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
        Ok(Jwks {
            settings,
            client,
            keys: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            state: Mutex::new(FetchState::default()),
            fetching: tokio::sync::Mutex::new(()),
            refresher_started: AtomicBool::new(false),
            stop: Arc::new(Notify::new()),
            fetches: AtomicU64::new(0),
        })
    }

    /// The key set now serving, if one was ever obtained.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// Fetches attempted so far.
    #[cfg(test)]
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Seconds a client should wait before trying again when no keys are available.
    pub fn retry_after_secs(&self) -> u64 {
        self.settings.min_refresh.as_secs_f64().ceil() as u64
    }

    /// The key for a token's `kid` and the generation of the set it came from.
    pub async fn key_for(
        self: &Arc<Self>,
        kid: Option<&str>,
    ) -> Result<(Arc<KeyEntry>, u64), Rejection> {
        self.start_refresher();
        if self.current().is_none() {
            self.refresh(false).await;
        }
        let Some(set) = self.current() else {
            return Err(Rejection::NoKeys);
        };
        if let Some(entry) = set.find(kid) {
            return Ok((Arc::clone(entry), set.generation));
        }
        // Perhaps the issuer rotated keys since the last fetch.
        if kid.is_some() && self.refresh(false).await {
            if let Some(set) = self.current() {
                if let Some(entry) = set.find(kid) {
                    return Ok((Arc::clone(entry), set.generation));
                }
            }
        }
        Err(Rejection::UnknownKey)
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetch now unless a fetch ran less than `min_refresh` ago (`force` skips that check).
    /// Returns whether a fetch ran (here or in a caller we waited for).
    pub async fn refresh(&self, force: bool) -> bool {
        let asked = Instant::now();
        let _fetching = self.fetching.lock().await;
        {
            let mut state = self.lock_state();
            if let Some(last) = state.last_attempt {
                if last >= asked {
                    return true;
                }
                if !force && last.elapsed() < self.settings.min_refresh {
                    return false;
                }
            }
            state.last_attempt = Some(Instant::now());
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let filter = self.settings.filter.as_str();
        let fetched = self.fetch().await;
        let result = if fetched.is_ok() { "ok" } else { "failed" };
        shared::JWKS_REFRESHES
            .with_label_values(&[filter, result])
            .inc();
        match fetched {
            Ok(body) => {
                self.install(&body);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                shared::JWKS_LAST_SUCCESS
                    .with_label_values(&[filter])
                    .set(now.as_secs_f64());
            }
            Err(e) => tracing::warn!(
                url = %self.settings.url,
                serving_last_good = self.current().is_some(),
                "JWKS refresh failed: {e}"
            ),
        }
        true
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        let mut resp = self
            .client
            .get(&self.settings.url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("the endpoint answered {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!(
                "the document is larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!(
                    "the document is larger than {MAX_JWKS_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn install(&self, body: &[u8]) {
        let fingerprint = digest(body);
        if self.lock_state().installed == Some(fingerprint) && self.current().is_some() {
            return;
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        match KeySet::from_jwks(body, &self.settings.algorithms, generation) {
            Ok(set) => {
                tracing::info!(url = %self.settings.url, keys = set.len(), "JWKS key set updated");
                self.keys.store(Some(Arc::new(set)));
                self.lock_state().installed = Some(fingerprint);
            }
            Err(e) => tracing::warn!(
                url = %self.settings.url,
                serving_last_good = self.current().is_some(),
                "JWKS refresh refused: {e}"
            ),
        }
    }

    /// Start the background refresher on the current runtime, once.
    /// `None` once a key set was obtained; until then why not, after asking for one (a
    /// fetch on the current runtime, at most every `min_refresh`) so that readiness probes
    /// bring the keys even before any request does.
    pub fn not_ready(self: &Arc<Self>) -> Option<String> {
        if self.current().is_some() {
            return None;
        }
        self.start_refresher();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let jwks = Arc::clone(self);
            runtime.spawn(async move { jwks.refresh(false).await });
        }
        Some(format!("no keys from {} yet", self.settings.url))
    }

    fn start_refresher(self: &Arc<Self>) {
        if self.refresher_started.load(Ordering::Relaxed)
            || self.refresher_started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(refresh_loop(Arc::downgrade(self), Arc::clone(&self.stop)));
            }
            Err(_) => self.refresher_started.store(false, Ordering::Release),
        }
    }
}

/// Refresh every `refresh` (every `min_refresh` while no key set was ever obtained) until the
/// [`Jwks`] is dropped.
async fn refresh_loop(jwks: Weak<Jwks>, stop: Arc<Notify>) {
    loop {
        let wait = match jwks.upgrade() {
            Some(j) if j.current().is_some() => j.settings.refresh,
            Some(j) => j.settings.min_refresh,
            None => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.notified() => return,
        }
        let Some(j) = jwks.upgrade() else { return };
        j.refresh(true).await;
    }
}

#[cfg(test)]
#[path = "jwks_tests.rs"]
mod tests;
