//! A service's settings: one [`Env`] per service reads every setting the same way, and
//! [`ServiceConfig`] holds the ones every service has. Every setting has an embedded
//! default, so a service starts with none set: `127.0.0.1:<port>`, SQLite under `./data`,
//! the embedded event bus, its own key set.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `BIND` | listen address | `127.0.0.1:<the service's port>` |
//! | `DATA_DIR` | where SQLite files and generated keys live | `./data` |
//! | `DATABASE_URL` | `sqlite://…` or `postgres://…` | `sqlite://<DATA_DIR>/<service>.db` |
//! | `NATS_URL` | NATS JetStream for events; unset = the embedded bus (`<DATA_DIR>/<service>.bus.db`) | unset |
//! | `JWKS_URL` | where access-token keys are published | unset (the service's own keys) |
//!
//! Where a value comes from, first found wins:
//!
//! 1. what the process itself sets (a command-line flag, or platform mode wiring services
//!    together): [`Env::set`];
//! 2. the environment, each name prefixed with the service's name in capitals
//!    (`USER_DATABASE_URL`) before the bare name, so several services can share one
//!    environment;
//! 3. the TOML file named by `CONFIG_FILE` (or `USER_CONFIG_FILE`…), with the same names in
//!    lower case (`bind = "127.0.0.1:3001"`, `reservation_ttl = "15m"`); a name the service
//!    does not know is an error naming the file;
//! 4. the service's default.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// A setting that could not be used, naming the variable and why.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct ConfigError {
    /// The environment variable (or the file and key) that was read.
    pub variable: String,
    /// What is wrong with its value.
    pub reason: String,
}

/// The settings every service reads, with what each is for.
pub const COMMON_SETTINGS: &[Setting] = &[
    Setting::flag(
        "BIND",
        "listen address (default 127.0.0.1:<the service's port>)",
    ),
    Setting::flag(
        "DATA_DIR",
        "folder for SQLite files and generated keys (default ./data)",
    ),
    Setting::flag(
        "DATABASE_URL",
        "sqlite://… or postgres://… (default sqlite://<DATA_DIR>/<service>.db)",
    ),
    Setting::flag(
        "NATS_URL",
        "NATS JetStream for events (default: the embedded bus, a log under DATA_DIR)",
    ),
    Setting::env(
        "JWKS_URL",
        "where access-token keys are published (default: the user service's)",
    ),
    Setting::env("TOKEN_ISSUER", "iss of the access tokens (gatehouse-user)"),
    Setting::env("TOKEN_AUDIENCE", "aud of the access tokens (gatehouse)"),
    Setting::env(
        "LOG_FORMAT",
        "text (default) or json: one JSON object per line",
    ),
];

/// One setting a service reads: its name (an environment variable, a lower-case key in the
/// settings file) and, with `flag`, a command-line flag `--name-in-kebab-case` too.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The upper-case name (`RESERVATION_TTL`).
    pub name: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
    /// Whether it is also a command-line flag.
    pub flag: bool,
}

impl Setting {
    /// A setting read from the environment and the file.
    pub const fn env(name: &'static str, help: &'static str) -> Setting {
        Setting {
            name,
            help,
            flag: false,
        }
    }

    /// A setting that is also a command-line flag.
    pub const fn flag(name: &'static str, help: &'static str) -> Setting {
        Setting {
            name,
            help,
            flag: true,
        }
    }

    /// `--bootstrap-admin` for `BOOTSTRAP_ADMIN`.
    pub fn long(&self) -> String {
        self.name.to_ascii_lowercase().replace('_', "-")
    }
}

type Lookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where one service's settings come from (see the module docs for the order). Cheap to
/// clone; typed reads name the variable in their errors.
#[derive(Clone)]
pub struct Env {
    service: &'static str,
    prefix: String,
    set: HashMap<String, String>,
    vars: Lookup,
    file: Option<(String, HashMap<String, String>)>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values may be secrets: names only.
        f.debug_struct("Env")
            .field("service", &self.service)
            .field("set", &self.set.keys().collect::<Vec<_>>())
            .field("file", &self.file.as_ref().map(|(p, _)| p))
            .finish_non_exhaustive()
    }
}

impl Env {
    /// The process environment of `service`, over the file `CONFIG_FILE` (or
    /// `<SERVICE>_CONFIG_FILE`) names, if any.
    pub fn process(service: &'static str) -> Result<Env, ConfigError> {
        Env::from_lookup(service, |k| std::env::var(k).ok()).with_file_from_env()
    }

    /// Reads variables through `get` (a map in tests); no file.
    pub fn from_lookup(
        service: &'static str,
        get: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Env {
        Env {
            service,
            prefix: format!("{}_", service.to_ascii_uppercase()),
            set: HashMap::new(),
            vars: Arc::new(get),
            file: None,
        }
    }

    /// The service these settings are for.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Sets `name` above everything else (a flag, or platform wiring).
    pub fn set(mut self, name: &str, value: impl Into<String>) -> Env {
        self.set.insert(name.to_owned(), value.into());
        self
    }

    /// Reads the file named by `--config` (set as `CONFIG_FILE`), `<SERVICE>_CONFIG_FILE` or
    /// `CONFIG_FILE`, if any is given.
    pub fn with_file_from_env(mut self) -> Result<Env, ConfigError> {
        let named = self
            .set
            .get("CONFIG_FILE")
            .map(|path| ("--config".to_owned(), path.clone()))
            .or_else(|| self.var(&format!("{}CONFIG_FILE", self.prefix)))
            .or_else(|| self.var("CONFIG_FILE"));
        if let Some((variable, path)) = named {
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
                variable: variable.clone(),
                reason: format!("{path}: {e}"),
            })?;
            let values =
                parse_file(&path, &text).map_err(|reason| ConfigError { variable, reason })?;
            self.file = Some((path, values));
        }
        Ok(self)
    }

    /// Fails on a key of the settings file that is none of `known` (the common settings
    /// are always known): a typo must not pass for a default.
    pub fn check_file(&self, known: &[Setting]) -> Result<(), ConfigError> {
        let Some((path, values)) = &self.file else {
            return Ok(());
        };
        let names = || COMMON_SETTINGS.iter().chain(known).map(|s| s.name);
        let mut keys: Vec<&String> = values.keys().collect();
        keys.sort();
        for key in keys {
            if !names().any(|n| n.eq_ignore_ascii_case(key)) {
                let known: Vec<String> = names().map(|n| n.to_ascii_lowercase()).collect();
                return Err(ConfigError {
                    variable: path.clone(),
                    reason: format!("unknown setting {key:?} (known: {})", known.join(", ")),
                });
            }
        }
        Ok(())
    }

    fn var(&self, name: &str) -> Option<(String, String)> {
        (self.vars)(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (name.to_owned(), v))
    }

    /// `name`'s value and where it came from (the variable, or `file:key`), if set.
    pub fn lookup(&self, name: &str) -> Option<(String, String)> {
        if let Some(v) = self.set.get(name) {
            return Some((name.to_owned(), v.clone()));
        }
        let prefixed = format!("{}{name}", self.prefix);
        self.var(&prefixed).or_else(|| self.var(name)).or_else(|| {
            let (path, values) = self.file.as_ref()?;
            let key = name.to_ascii_lowercase();
            values
                .get(&key)
                .map(|v| (format!("{path}: {key}"), v.clone()))
        })
    }

    /// `name` as text, if set.
    pub fn string(&self, name: &str) -> Option<String> {
        self.lookup(name).map(|(_, v)| v)
    }

    /// `name` parsed by `parse`; `what` says what was expected (`a duration like 30s`).
    pub fn parse<T>(
        &self,
        name: &str,
        what: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        let Some((variable, v)) = self.lookup(name) else {
            return Ok(None);
        };
        match parse(v.trim()) {
            Some(t) => Ok(Some(t)),
            None => Err(ConfigError {
                variable,
                reason: format!("{v:?} is not {what}"),
            }),
        }
    }

    /// A duration like `15m`, `30s` or `500ms` (not zero).
    pub fn duration(&self, name: &str) -> Result<Option<Duration>, ConfigError> {
        self.parse(name, "a duration like 15m or 500ms", |v| {
            humantime::parse_duration(v).ok().filter(|d| !d.is_zero())
        })
    }

    /// A whole number ≥ 0.
    pub fn count<T: FromStr + Default + PartialOrd>(
        &self,
        name: &str,
    ) -> Result<Option<T>, ConfigError> {
        self.parse(name, "a whole number ≥ 0", |v| {
            v.parse::<T>().ok().filter(|n| *n >= T::default())
        })
    }
}

/// Settings shared by every service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The service's name (`user`, `product`…), used for defaults and metric labels.
    pub service: &'static str,
    /// Where the HTTP listener binds.
    pub bind: SocketAddr,
    /// Folder for SQLite files and generated keys.
    pub data_dir: PathBuf,
    /// The database URL.
    pub database_url: String,
    /// NATS server for the JetStream bus; `None` = the embedded bus.
    pub nats_url: Option<String>,
    /// JWKS to verify access tokens against; `None` = [`DEFAULT_JWKS_URL`] (the user
    /// service itself verifies with its own key set).
    pub jwks_url: Option<String>,
    /// `iss` of the access tokens: what the user service issues and the others require.
    pub issuer: String,
    /// `aud` of the access tokens.
    pub audience: String,
}

/// Where access-token keys are published when `JWKS_URL` is not set: the user service on
/// its default port.
pub const DEFAULT_JWKS_URL: &str = "http://127.0.0.1:3001/.well-known/jwks.json";

impl ServiceConfig {
    /// Reads the settings of `service` (default port `port`) from the process environment,
    /// over those of the `CONFIG_FILE` it names, if any.
    pub fn from_env(service: &'static str, port: u16) -> Result<ServiceConfig, ConfigError> {
        ServiceConfig::read(&Env::process(service)?, port)
    }

    /// Reads the settings through `get` (a map in tests).
    pub fn from_lookup(
        service: &'static str,
        port: u16,
        get: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Result<ServiceConfig, ConfigError> {
        ServiceConfig::read(&Env::from_lookup(service, get), port)
    }

    /// Reads the common settings from `env` (default port `port`).
    pub fn read(env: &Env, port: u16) -> Result<ServiceConfig, ConfigError> {
        let service = env.service();
        let bind = env
            .parse("BIND", "a socket address like 127.0.0.1:3001", |v| {
                v.parse().ok()
            })?
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], port)));
        let data_dir = env
            .string("DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("data"));
        let database_url = env
            .parse(
                "DATABASE_URL",
                "a URL starting sqlite:// or postgres://",
                |v| {
                    ["sqlite:", "postgres://", "postgresql://"]
                        .iter()
                        .any(|p| v.starts_with(p))
                        .then(|| v.to_owned())
                },
            )?
            .unwrap_or_else(|| format!("sqlite://{}/{service}.db", data_dir.display()));
        Ok(ServiceConfig {
            service,
            bind,
            data_dir,
            database_url,
            nats_url: env.string("NATS_URL"),
            jwks_url: env.string("JWKS_URL"),
            issuer: env
                .string("TOKEN_ISSUER")
                .unwrap_or_else(|| "gatehouse-user".into()),
            audience: env
                .string("TOKEN_AUDIENCE")
                .unwrap_or_else(|| "gatehouse".into()),
        })
    }

    /// A verifier of the user service's tokens: the JWKS at `jwks_url`, fetched on first
    /// use, with the configured issuer and audience.
    pub fn verifier(&self) -> crate::Verifier {
        let url = self.jwks_url.as_deref().unwrap_or(DEFAULT_JWKS_URL);
        crate::Verifier::remote(url, &self.issuer, &self.audience)
    }
}

/// The settings in a TOML file, as strings by lower-case name (numbers and booleans as
/// written); an error names the file and the line.
fn parse_file(path: &str, text: &str) -> Result<HashMap<String, String>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        format!("{path}:{line}: {}", e.message())
    })?;
    let mut out = HashMap::new();
    for (k, v) in table {
        let value = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(format!(
                    "{path}: {k} must be a string, a number or a boolean, not {}",
                    other.type_str()
                ))
            }
        };
        out.insert(k.to_ascii_lowercase(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_are_the_embedded_setup_and_a_prefixed_variable_wins() {
        let c = ServiceConfig::from_lookup("user", 3001, lookup(&[])).unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:3001");
        assert_eq!(c.database_url, "sqlite://data/user.db");
        assert!(c.nats_url.is_none());
        let c = ServiceConfig::from_lookup(
            "user",
            3001,
            lookup(&[
                ("DATABASE_URL", "postgres://a/b"),
                ("USER_DATABASE_URL", "postgres://c/d"),
            ]),
        )
        .unwrap();
        assert_eq!(c.database_url, "postgres://c/d");
    }

    #[test]
    fn what_the_process_sets_wins_over_the_environment_and_the_file() {
        let mut env = Env::from_lookup("user", lookup(&[("USER_BIND", "127.0.0.1:5000")]));
        env.file = Some((
            "u.toml".into(),
            parse_file("u.toml", "bind = \"127.0.0.1:6000\"\ndata_dir = \"d\"\n").unwrap(),
        ));
        let c = ServiceConfig::read(&env, 3001).unwrap();
        assert_eq!(
            c.bind.to_string(),
            "127.0.0.1:5000",
            "environment over file"
        );
        assert_eq!(c.data_dir, PathBuf::from("d"), "the file over the default");
        let c = ServiceConfig::read(&env.set("BIND", "127.0.0.1:7000"), 3001).unwrap();
        assert_eq!(
            c.bind.to_string(),
            "127.0.0.1:7000",
            "a flag over everything"
        );
    }

    #[test]
    fn a_config_file_gives_settings_and_names_its_mistakes() {
        let f = parse_file(
            "u.toml",
            "bind = \"127.0.0.1:4000\"\ndatabase_url = \"sqlite://x.db\"\ncache_capacity = 5\n",
        )
        .unwrap();
        assert_eq!(f["bind"], "127.0.0.1:4000");
        assert_eq!(f["cache_capacity"], "5");
        let e = parse_file("u.toml", "bind = \"a\"\ndatabase_url = [3]\n").unwrap_err();
        assert!(e.contains("database_url must be a string"), "{e}");
        let e = parse_file("u.toml", "bind = \"a\"\nx = = 1\n").unwrap_err();
        assert!(e.starts_with("u.toml:2:"), "{e}");

        let mut env = Env::from_lookup("product", lookup(&[]));
        env.file = Some((
            "p.toml".into(),
            parse_file("p.toml", "bind = \"a\"\nreservaton_ttl = \"1m\"\n").unwrap(),
        ));
        let known = [Setting::env("RESERVATION_TTL", "")];
        let e = env.check_file(&known).unwrap_err();
        assert_eq!(e.variable, "p.toml");
        assert!(
            e.reason.contains("unknown setting \"reservaton_ttl\""),
            "{e}"
        );
        assert!(e.reason.contains("reservation_ttl"), "{e}");
        env.file = Some((
            "p.toml".into(),
            parse_file("p.toml", "reservation_ttl = \"1m\"\n").unwrap(),
        ));
        env.check_file(&known).unwrap();
        assert_eq!(
            env.duration("RESERVATION_TTL").unwrap(),
            Some(Duration::from_secs(60))
        );
    }

    /// `--config FILE` (which the command line sets as `CONFIG_FILE`) is read like the
    /// variable, and wins over it.
    #[test]
    fn the_config_flag_names_the_settings_file() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("flag.toml");
        std::fs::write(&flag, "bind = \"127.0.0.1:4001\"\n").unwrap();
        let var = dir.path().join("var.toml");
        std::fs::write(&var, "bind = \"127.0.0.1:4002\"\n").unwrap();
        let var_text = var.display().to_string();
        let env = Env::from_lookup("user", lookup(&[("CONFIG_FILE", &var_text)]))
            .set("CONFIG_FILE", flag.display().to_string())
            .with_file_from_env()
            .unwrap();
        let (from, bind) = env.lookup("BIND").unwrap();
        assert_eq!(bind, "127.0.0.1:4001");
        assert!(from.contains("flag.toml"), "{from}");
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let e =
            ServiceConfig::from_lookup("user", 3001, lookup(&[("USER_BIND", "nope")])).unwrap_err();
        assert_eq!(e.variable, "USER_BIND");
        let e = ServiceConfig::from_lookup("user", 3001, lookup(&[("DATABASE_URL", "mysql://x")]))
            .unwrap_err();
        assert!(e.to_string().starts_with("DATABASE_URL: "), "{e}");
        let env = Env::from_lookup("order", lookup(&[("ORDER_SAGA_LEASE", "soon")]));
        assert_eq!(
            env.duration("SAGA_LEASE").unwrap_err().variable,
            "ORDER_SAGA_LEASE"
        );
        let env = Env::from_lookup("order", lookup(&[("LIMIT", "-1")]));
        assert_eq!(env.count::<i64>("LIMIT").unwrap_err().variable, "LIMIT");
    }
}
