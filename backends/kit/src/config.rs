//! A service's settings from its environment. Every setting has an embedded default, so a
//! service starts with none set: `127.0.0.1:<port>`, SQLite under `./data`, the in-process
//! bus, its own key set.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `BIND` | listen address | `127.0.0.1:<the service's port>` |
//! | `DATA_DIR` | where SQLite files and generated keys live | `./data` |
//! | `DATABASE_URL` | `sqlite://…` or `postgres://…` | `sqlite://<DATA_DIR>/<service>.db` |
//! | `NATS_URL` | NATS JetStream for events; unset = in-process bus | unset |
//! | `JWKS_URL` | where access-token keys are published | unset (the service's own keys) |
//!
//! Each variable may be prefixed with the service's name in capitals (`USER_DATABASE_URL`),
//! which wins over the bare name, so several services can share one environment.
//!
//! `CONFIG_FILE` (or `USER_CONFIG_FILE`…) names a TOML file with the same settings in lower
//! case (`bind = "127.0.0.1:3001"`, `database_url = "…"`); the environment wins over it.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A setting that could not be used, naming the variable and why.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct ConfigError {
    /// The environment variable that was read.
    pub variable: String,
    /// What is wrong with its value.
    pub reason: String,
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
    /// NATS server for the JetStream bus; `None` = in-process bus.
    pub nats_url: Option<String>,
    /// JWKS to verify access tokens against; `None` = the service's own key set.
    pub jwks_url: Option<String>,
}

impl ServiceConfig {
    /// Reads the settings of `service` (default port `port`) from the process environment,
    /// over those of the `CONFIG_FILE` it names, if any.
    pub fn from_env(service: &'static str, port: u16) -> Result<ServiceConfig, ConfigError> {
        let env = |k: &str| std::env::var(k).ok();
        let prefixed = format!("{}_CONFIG_FILE", service.to_ascii_uppercase());
        let file = match env(&prefixed)
            .map(|f| (prefixed.clone(), f))
            .or_else(|| env("CONFIG_FILE").map(|f| ("CONFIG_FILE".to_owned(), f)))
        {
            Some((variable, path)) => read_file(&variable, &path)?,
            None => Default::default(),
        };
        let prefix = format!("{}_", service.to_ascii_uppercase());
        ServiceConfig::from_lookup(service, port, |k| {
            env(k).or_else(|| {
                let bare = k.strip_prefix(&prefix).unwrap_or(k);
                file.get(&bare.to_ascii_lowercase()).cloned()
            })
        })
    }

    /// Reads the settings through `get` (the environment, or a map in tests).
    pub fn from_lookup(
        service: &'static str,
        port: u16,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<ServiceConfig, ConfigError> {
        let prefix = service.to_ascii_uppercase();
        let read = |name: &str| -> Option<(String, String)> {
            let prefixed = format!("{prefix}_{name}");
            get(&prefixed)
                .map(|v| (prefixed, v))
                .or_else(|| get(name).map(|v| (name.to_owned(), v)))
                .filter(|(_, v)| !v.trim().is_empty())
        };
        let bind = match read("BIND") {
            Some((var, v)) => v.trim().parse().map_err(|e| ConfigError {
                variable: var,
                reason: format!("{v:?} is not a socket address like 127.0.0.1:3001 ({e})"),
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let data_dir = read("DATA_DIR")
            .map(|(_, v)| PathBuf::from(v))
            .unwrap_or_else(|| PathBuf::from("data"));
        let database_url = match read("DATABASE_URL") {
            Some((var, v)) => {
                let ok = ["sqlite:", "postgres://", "postgresql://"]
                    .iter()
                    .any(|p| v.starts_with(p));
                if !ok {
                    return Err(ConfigError {
                        variable: var,
                        reason: format!("{v:?} must start with sqlite:// or postgres://"),
                    });
                }
                v
            }
            None => format!("sqlite://{}/{service}.db", data_dir.display()),
        };
        Ok(ServiceConfig {
            service,
            bind,
            data_dir,
            database_url,
            nats_url: read("NATS_URL").map(|(_, v)| v),
            jwks_url: read("JWKS_URL").map(|(_, v)| v),
        })
    }
}

/// The settings in a TOML file, as strings by lower-case name; an error names the file and
/// the line.
fn read_file(
    variable: &str,
    path: &str,
) -> Result<std::collections::HashMap<String, String>, ConfigError> {
    let err = |reason: String| ConfigError {
        variable: variable.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("{path}: {e}")))?;
    parse_file(path, &text).map_err(err)
}

fn parse_file(path: &str, text: &str) -> Result<std::collections::HashMap<String, String>, String> {
    const KEYS: [&str; 5] = ["bind", "data_dir", "database_url", "nats_url", "jwks_url"];
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        format!("{path}:{line}: {}", e.message())
    })?;
    let mut out = std::collections::HashMap::new();
    for (k, v) in table {
        if !KEYS.contains(&k.as_str()) {
            return Err(format!(
                "{path}: unknown setting {k:?} (known: {})",
                KEYS.join(", ")
            ));
        }
        match v {
            toml::Value::String(s) => out.insert(k, s),
            other => {
                return Err(format!(
                    "{path}: {k} must be a string, not {}",
                    other.type_str()
                ))
            }
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
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
    fn a_config_file_gives_settings_and_names_its_mistakes() {
        let f = parse_file(
            "u.toml",
            "bind = \"127.0.0.1:4000\"\ndatabase_url = \"sqlite://x.db\"\n",
        )
        .unwrap();
        assert_eq!(f["bind"], "127.0.0.1:4000");
        let e = parse_file("u.toml", "bind = \"a\"\nport = \"1\"\n").unwrap_err();
        assert!(e.contains("unknown setting \"port\""), "{e}");
        let e = parse_file("u.toml", "bind = \"a\"\ndatabase_url = 3\n").unwrap_err();
        assert!(e.contains("database_url must be a string"), "{e}");
        let e = parse_file("u.toml", "bind = \"a\"\nx = = 1\n").unwrap_err();
        assert!(e.starts_with("u.toml:2:"), "{e}");
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let e =
            ServiceConfig::from_lookup("user", 3001, lookup(&[("USER_BIND", "nope")])).unwrap_err();
        assert_eq!(e.variable, "USER_BIND");
        let e = ServiceConfig::from_lookup("user", 3001, lookup(&[("DATABASE_URL", "mysql://x")]))
            .unwrap_err();
        assert!(e.to_string().starts_with("DATABASE_URL: "), "{e}");
    }
}
