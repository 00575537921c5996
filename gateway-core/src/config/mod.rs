//! The operator's configuration: the serde model of `gateway.toml`, loading with line and
//! column errors, and [`Config::validate`] that reports every problem in one pass.
//!
//! This module is pure data: it reads a file and parses it, nothing more. Turning a valid
//! [`Config`] into something that serves traffic is [`crate::snapshot`]'s job.

pub(crate) mod duration;
mod error;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::ConfigError;
pub(crate) use validate::parse_cidr;
pub use validate::ConfigIssue;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Filters applied to every route, before the route's own (by name from `[filters]`).
    #[serde(default)]
    pub default_filters: Vec<String>,
    /// The edge listener(s) and process-wide settings. Changes here need a restart.
    #[serde(default)]
    pub server: ServerConfig,
    /// The admin listener (health, metrics, config, reload).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Named pools of backends that routes forward to.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// The route table; order in the file only breaks ties (see [`RouteConfig::priority`]).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Named filter declarations: `[filters.NAME] kind = "…"` plus the kind's settings.
    #[serde(default)]
    pub filters: BTreeMap<String, FilterConfig>,
    /// Access log, `Server-Timing`, tracing.
    #[serde(default)]
    pub observability: ObservabilityConfig,
    /// The `gateway` binary's all-in-one mode: which backend services to run in the same
    /// process (`[platform]`). The library only carries it; the binary reads and checks it.
    /// Changes need a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<toml::Table>,
}

/// Observability switches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// JSON access log: `"stdout"`, a file path (appended), or `""` for none. Applies at start.
    #[serde(default)]
    pub access_log: String,
    /// Add `Server-Timing: gateway;dur=…, upstream;dur=…` to responses (exposes timings to
    /// clients; off by default).
    #[serde(default)]
    pub server_timing: bool,
    /// Base URL of an OpenTelemetry collector's OTLP/HTTP receiver (`http://127.0.0.1:4318`,
    /// or `https://…`; spans are posted to `/v1/traces` under it), or `""` for no export. Each request's span
    /// is exported in the client's W3C trace. Needs a binary built with the `otlp` cargo
    /// feature (`validate` refuses it otherwise). Applies at start.
    #[serde(default)]
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    #[serde(default = "default_otlp_service_name")]
    pub otlp_service_name: String,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            access_log: String::new(),
            server_timing: false,
            otlp_endpoint: String::new(),
            otlp_service_name: default_otlp_service_name(),
        }
    }
}

fn default_otlp_service_name() -> String {
    "gatehouse".to_string()
}

/// One declared filter.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FilterConfig {
    /// The registered kind that builds it (`jwt`, `rate_limit`, `cors`, or an embedder's own).
    pub kind: String,
    /// Everything else in the table, handed to the kind's factory.
    #[serde(flatten)]
    pub settings: toml::Table,
}

/// Edge listener settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses the proxy listens on (`ip:port`; port 0 picks a free port).
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Accept HTTP/2 over cleartext (prior knowledge) next to HTTP/1.1.
    #[serde(default = "default_true")]
    pub h2c: bool,
    /// CIDRs whose `X-Forwarded-*` headers are believed; everyone else's are replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Upper bound on retries per request across all routes (each route's policy applies below it).
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
    /// On shutdown, how long to keep accepting before draining (lets a load balancer deregister us).
    #[serde(default, with = "duration")]
    pub grace_period: Duration,
    /// On shutdown, how long in-flight requests get to finish.
    #[serde(default = "default_shutdown_timeout", with = "duration")]
    pub shutdown_timeout: Duration,
    /// How often the config file (and the files it names) is hashed to catch a change the
    /// file watch cannot see; `0s` turns the check off. Applies at start.
    #[serde(default = "default_config_check_interval", with = "duration")]
    pub config_check_interval: Duration,
    /// Send header names upstream and to clients spelled as the peer spelled them. Off by
    /// default: names the gateway forwards over HTTP/1 go out in lower case (a few common ones
    /// title-cased), as over HTTP/2 and as Envoy and HAProxy send them, which lets the gateway
    /// set its own fields at a fraction of the cost. Turn it on for a backend that (against
    /// RFC 9110 §5.1) reads names case-sensitively.
    #[serde(default)]
    pub preserve_header_case: bool,
    /// What to do with a request header whose name has an underscore (`X_User_Id`), which
    /// some frameworks fold into the dashed name (`X-User-Id`) a filter may have vetted:
    /// `drop` it (the default, as nginx does), `reject` the request with 400, or `allow` it.
    #[serde(default)]
    pub header_underscores: HeaderUnderscores,
    /// How long a kept-alive client connection may sit idle between requests before the
    /// gateway closes it (whole seconds, rounded up; `"0s"`: no limit).
    #[serde(default = "default_keepalive_timeout", with = "duration")]
    pub keepalive_timeout: Duration,
    /// How long a client has from the first byte of a request head to its end before the
    /// connection is closed (against slow clients; HAProxy's `timeout http-request`;
    /// `"0s"`: no limit beyond Pingora's 60 s per read).
    #[serde(default = "default_header_timeout", with = "duration")]
    pub header_timeout: Duration,
    /// Client connections open at once; one more is closed as soon as it is accepted
    /// (0: no cap).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTPS listeners and their certificates (`[server.tls]`). The listeners apply at start;
    /// the certificates, and the files they are read from, reload like routes do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
}

/// TLS termination at the edge.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// Addresses that speak HTTPS (`ip:port`; port 0 picks a free port). TLS 1.2 and 1.3;
    /// ALPN offers `h2` then `http/1.1`.
    pub listen: Vec<String>,
    /// Certificates, picked per handshake by the name the client asks for (SNI).
    pub certificates: Vec<CertificateConfig>,
    /// Plain listeners answer every request with a redirect (308) to the same URL on HTTPS.
    #[serde(default)]
    pub redirect_plain: bool,
    /// `Strict-Transport-Security` value added to every HTTPS response (`""`: none), e.g.
    /// `"max-age=31536000; includeSubDomains"`.
    #[serde(default)]
    pub hsts: String,
}

/// One certificate with its private key, PEM files (paths relative to the config file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The certificate chain, leaf first.
    pub cert: String,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Server names it answers for: `shop.example` or `*.shop.example` (one label). Empty:
    /// the DNS names the certificate itself carries.
    #[serde(default)]
    pub names: Vec<String>,
    /// Served when the client's name matches no certificate, or it sends none (default: the
    /// first certificate).
    #[serde(default)]
    pub default: bool,
}

/// The client side of TLS to an upstream's backends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// Name sent as SNI and checked against the backends' certificate (backends are
    /// addresses, so it cannot come from them).
    pub sni: String,
    /// PEM file of the CA(s) that sign the backends' certificates (default: the system's
    /// roots). Relative to the config file.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Verify the backends' certificate and name. Turning it off is allowed only explicitly,
    /// and `gateway check` warns about it.
    #[serde(default = "default_true")]
    pub verify: bool,
    /// Client certificate chain (PEM) presented to backends that ask for one (mTLS).
    #[serde(default)]
    pub client_cert: Option<String>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub client_key: Option<String>,
}

/// What the gateway does with request header names that contain `_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeaderUnderscores {
    /// Remove such fields before anything reads the request.
    #[default]
    Drop,
    /// Answer 400.
    Reject,
    /// Forward them as they are.
    Allow,
}

/// Admin listener settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener; loopback by default because it can reload config.
    /// An empty string disables the listener.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

/// A named pool of backends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The name routes refer to.
    pub name: String,
    /// `"ip:port"`, `"host:port"` (every address the name resolves to is a backend), or
    /// `{ addr = "…", weight = N }`.
    pub backends: Vec<BackendConfig>,
    /// How often backends given by name are resolved again.
    #[serde(default)]
    pub dns: DnsConfig,
    /// How a backend is picked for each request.
    #[serde(default)]
    pub balance: Balance,
    /// What `consistent_hash` hashes: `client_ip`, `path`, `header:NAME` or `cookie:NAME`.
    #[serde(default)]
    pub hash_key: Option<String>,
    /// Active health checking; without it every backend counts as healthy.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Default timeouts for routes to this upstream (a route's own `timeouts` win).
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Take a backend out of selection for a while after consecutive failed requests
    /// (`outlier_detection = {}` for the defaults). Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierConfig>,
    /// Retries in flight to this pool, as a share of its requests in flight.
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
    /// Reach the backends over TLS (`tls = { sni = "api.internal" }`); health checks too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
}

/// Passive outlier ejection of a pool (see [`crate::outlier`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Failed attempts in a row (connect failure, broken exchange, timeout or 5xx) that
    /// eject a backend.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; the n-th lasts n times as long.
    #[serde(default = "default_base_ejection_time", with = "duration")]
    pub base_ejection_time: Duration,
    /// The longest an ejection lasts.
    #[serde(default = "default_max_ejection_time", with = "duration")]
    pub max_ejection_time: Duration,
    /// The most of the pool that may be out at once, in percent (one backend of a pool of two
    /// or more may always be).
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: default_consecutive_failures(),
            base_ejection_time: default_base_ejection_time(),
            max_ejection_time: default_max_ejection_time(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection_time() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection_time() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejection_percent() -> u32 {
    50
}

/// When a backend name is looked up again: after the answer's TTL, held between
/// `min_refresh` and `max_refresh` (a resolver that reports no TTL, as the system's, is asked
/// every `max_refresh`; a failed lookup is retried after `min_refresh`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// The shortest time an answer is kept.
    #[serde(default = "default_dns_min_refresh", with = "duration")]
    pub min_refresh: Duration,
    /// The longest time an answer is kept.
    #[serde(default = "default_dns_max_refresh", with = "duration")]
    pub max_refresh: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            min_refresh: default_dns_min_refresh(),
            max_refresh: default_dns_max_refresh(),
        }
    }
}

fn default_dns_min_refresh() -> Duration {
    Duration::from_secs(1)
}
fn default_dns_max_refresh() -> Duration {
    Duration::from_secs(5)
}

/// How many retries may be in flight to a pool (Envoy's retry budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Retries in flight as a share of the pool's requests in flight, in percent.
    #[serde(default = "default_budget_percent")]
    pub percent: u32,
    /// Retries in flight always allowed, however little else is in flight.
    #[serde(default = "default_budget_min")]
    pub min_concurrency: usize,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            percent: default_budget_percent(),
            min_concurrency: default_budget_min(),
        }
    }
}

fn default_budget_percent() -> u32 {
    20
}
fn default_budget_min() -> usize {
    3
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum BackendConfig {
    /// Just an address, weight 1.
    Addr(String),
    /// An address with a relative weight (used by `weighted` and `consistent_hash`).
    Weighted {
        /// `ip:port` or `host:port` of the backend (each address of a name gets the weight).
        addr: String,
        /// Relative share of traffic.
        #[serde(default = "default_weight")]
        weight: usize,
    },
}

impl BackendConfig {
    /// The backend's `ip:port` or `host:port` text.
    pub fn addr(&self) -> &str {
        match self {
            BackendConfig::Addr(a) => a,
            BackendConfig::Weighted { addr, .. } => addr,
        }
    }

    /// The configured weight (1 when not given).
    pub fn weight(&self) -> usize {
        match self {
            BackendConfig::Addr(_) => 1,
            BackendConfig::Weighted { weight, .. } => *weight,
        }
    }
}

/// Load-balancing algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each backend in turn, ignoring weights.
    #[default]
    RoundRobin,
    /// Round robin proportional to each backend's weight.
    Weighted,
    /// Power of two random choices, the one with fewer requests in flight wins.
    LeastRequest,
    /// Ketama consistent hashing on [`UpstreamConfig::hash_key`].
    ConsistentHash,
}

/// Active health check of a pool.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `http` (a GET that must answer 2xx) or `tcp` (a connect).
    #[serde(default)]
    pub kind: HealthCheckKind,
    /// Path of the HTTP check.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// `Host` header of the HTTP check (defaults to the backend address).
    #[serde(default)]
    pub host: Option<String>,
    /// Time between two checks of one backend.
    #[serde(default = "default_health_interval", with = "duration")]
    pub interval: Duration,
    /// Connect and read timeout of one check.
    #[serde(default = "default_health_timeout", with = "duration")]
    pub timeout: Duration,
    /// Consecutive failures that take a backend out.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: usize,
    /// Consecutive successes that bring it back.
    #[serde(default = "default_healthy_after")]
    pub healthy_after: usize,
}

/// Kind of active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// `GET path` answered with a 2xx.
    #[default]
    Http,
    /// A TCP connect succeeds.
    Tcp,
}

/// Upstream timeouts; unset fields fall back to the upstream's, then to the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP connect timeout (default 5 s).
    #[serde(default, with = "duration::option")]
    pub connect: Option<Duration>,
    /// Longest wait for any read from the upstream, response head included (default 60 s).
    #[serde(default, with = "duration::option")]
    pub read: Option<Duration>,
    /// Longest wait for any write to the upstream (default 60 s).
    #[serde(default, with = "duration::option")]
    pub write: Option<Duration>,
    /// How long an idle pooled upstream connection is kept (default 60 s).
    #[serde(default, with = "duration::option")]
    pub idle: Option<Duration>,
}

impl Timeouts {
    /// Fields set here win; the rest come from `fallback`.
    pub fn or(self, fallback: Timeouts) -> Timeouts {
        Timeouts {
            connect: self.connect.or(fallback.connect),
            read: self.read.or(fallback.read),
            write: self.write.or(fallback.write),
            idle: self.idle.or(fallback.idle),
        }
    }
}

/// One route: what it matches and where it sends the request.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name; used in metrics, logs and `explain`.
    pub name: String,
    /// What a request must look like to take this route.
    #[serde(rename = "match", default)]
    pub matcher: MatchConfig,
    /// Name of the [`UpstreamConfig`] to forward to.
    pub upstream: String,
    /// Higher wins; among equal priorities the most specific match wins, then file order.
    #[serde(default)]
    pub priority: i32,
    /// Removed from the front of the (normalized) path before forwarding, on a segment boundary.
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// Regex rewrite of the path applied after `strip_prefix`.
    #[serde(default)]
    pub rewrite: Option<RewriteConfig>,
    /// Per-route timeouts (override the upstream's).
    #[serde(default)]
    pub timeouts: Timeouts,
    /// When a failed attempt may be tried again on another backend.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Filters of this route, by name, run after `default_filters`.
    #[serde(default)]
    pub filters: Vec<String>,
    /// Skip `default_filters` on this route (e.g. a public health endpoint).
    #[serde(default)]
    pub skip_default_filters: bool,
}

/// Request matchers; all given ones must hold.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// `api.example.com` (exact, case-insensitive) or `*.example.com` (any subdomain).
    #[serde(default)]
    pub host: Option<String>,
    /// The normalized path equals this.
    #[serde(default)]
    pub path: Option<String>,
    /// The normalized path is this or continues it after a `/`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The normalized path matches this regex (anchor it yourself).
    #[serde(default)]
    pub path_regex: Option<String>,
    /// Allowed methods; empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Headers that must be present with exactly these values (`"*"`: present with any value).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Path rewrite: `regex` replaced by `replace` (`$1`, `${name}` refer to captures).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// Pattern searched in the path.
    pub regex: String,
    /// Replacement text.
    pub replace: String,
}

/// Retry policy of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Total attempts including the first (1 disables retries).
    #[serde(default = "default_attempts")]
    pub attempts: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: default_attempts(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            threads: default_threads(),
            h2c: true,
            trusted_proxies: Vec::new(),
            max_retries: default_max_retries(),
            grace_period: Duration::ZERO,
            shutdown_timeout: default_shutdown_timeout(),
            config_check_interval: default_config_check_interval(),
            preserve_header_case: false,
            header_underscores: HeaderUnderscores::Drop,
            keepalive_timeout: default_keepalive_timeout(),
            header_timeout: default_header_timeout(),
            max_connections: default_max_connections(),
            tls: None,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
        }
    }
}

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:8080".to_string()]
}
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
fn default_true() -> bool {
    true
}
fn default_max_retries() -> usize {
    3
}
fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    10_000
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_config_check_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_admin_listen() -> String {
    "127.0.0.1:9090".to_string()
}
fn default_weight() -> usize {
    1
}
fn default_health_path() -> String {
    "/health".to_string()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_unhealthy_after() -> usize {
    2
}
fn default_healthy_after() -> usize {
    1
}
fn default_attempts() -> usize {
    2
}

/// The text of a config file and where it came from, kept together so errors can name both.
#[derive(Debug, Clone)]
pub struct Source {
    /// Path shown in error messages (`<inline>` for strings).
    pub path: PathBuf,
    /// The file's bytes as text.
    pub text: String,
}

impl Source {
    /// Read a file.
    pub fn read(path: impl AsRef<Path>) -> Result<Source, ConfigError> {
        let path = path.as_ref().to_path_buf();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Source { path, text })
    }

    /// Wrap text that did not come from a file.
    pub fn inline(text: impl Into<String>) -> Source {
        Source {
            path: PathBuf::from("<inline>"),
            text: text.into(),
        }
    }
}

impl Config {
    /// Parse TOML; a syntax or type error names the line and column.
    pub fn parse(source: &Source) -> Result<Config, ConfigError> {
        toml::from_str(&source.text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_col(&source.text, s.start))
                .unwrap_or((0, 0));
            ConfigError::Syntax {
                path: source.path.clone(),
                line,
                column,
                message: e.message().to_string(),
            }
        })
    }

    /// Parse and validate: a config that comes back `Ok` is ready to build a snapshot from.
    pub fn load(source: &Source) -> Result<Config, ConfigError> {
        let config = Config::parse(source)?;
        let issues = config.validate();
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: source.path.clone(),
                issues,
            })
        }
    }

    /// Read, parse and validate a file.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Config::load(&Source::read(path)?)
    }

    /// Parse and validate TOML text (for tests and embedders that build config in code).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::load(&Source::inline(text))
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file from the foundation issue must load as it is.
    pub(crate) const ISSUE_EXAMPLE: &str = r#"
[server]
listen = ["127.0.0.1:8080"]
threads = 2

[admin]
listen = "127.0.0.1:9090"

[[upstreams]]
name = "users"
backends = ["127.0.0.1:3001"]

[[upstreams]]
name = "products"
backends = [{ addr = "127.0.0.1:3002", weight = 2 }, { addr = "127.0.0.1:3012", weight = 1 }]
balance = "weighted"   # round_robin (default) | weighted | least_request | consistent_hash
health_check = { kind = "http", path = "/health", interval = "2s", unhealthy_after = 2, healthy_after = 1 }

[[routes]]
name = "users"
match = { path_prefix = "/api/users", methods = ["GET", "POST"] }
upstream = "users"
strip_prefix = "/api"

[[routes]]
name = "products"
match = { host = "shop.example.com", path_prefix = "/api/products" }
upstream = "products"
"#;

    #[test]
    fn issue_example_loads() {
        let c = Config::from_toml(ISSUE_EXAMPLE).expect("loads");
        assert_eq!(c.upstreams[1].balance, Balance::Weighted);
        assert_eq!(c.upstreams[1].backends[0].weight(), 2);
        let hc = c.upstreams[1].health_check.as_ref().expect("health check");
        assert_eq!(hc.interval, Duration::from_secs(2));
        assert_eq!(c.routes[0].strip_prefix.as_deref(), Some("/api"));
        assert_eq!(
            c.routes[1].matcher.host.as_deref(),
            Some("shop.example.com")
        );
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let err = Config::load(&Source::inline("[server]\nthreads = 2\nlisten = [\"a\"\n"))
            .expect_err("broken");
        let text = err.to_string();
        assert!(text.starts_with("<inline>:"), "{text}");
        match err {
            ConfigError::Syntax { line, .. } => assert!(line >= 3, "line {line}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_duration_is_a_syntax_error_with_position() {
        let src = "[[upstreams]]\nname = \"a\"\nbackends = [\"127.0.0.1:1\"]\nhealth_check = { interval = \"soon\" }\n";
        let err = Config::load(&Source::inline(src)).expect_err("bad duration");
        match err {
            ConfigError::Syntax { line, message, .. } => {
                assert_eq!(line, 4);
                assert!(message.contains("soon"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = Config::from_toml("[server]\nlisten = []\nthreds = 2\n").expect_err("typo");
        assert!(err.to_string().contains("threds"), "{err}");
    }
}
