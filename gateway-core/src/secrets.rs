//! Settings given by reference: `{ from_env = "NAME" }` or `{ from_file = "path" }` in place
//! of a string anywhere in a filter's settings, so a secret (an HS256 key, the password in a
//! Redis URL) comes from the environment or a mounted file (a Kubernetes Secret, a Compose
//! secret) and never sits in the config text, which may be a ConfigMap anyone can read.
//!
//! References are replaced by their values before the filters are built. A file's content is
//! the value without one trailing line break (an editor's, or `echo`'s); it is read with the
//! certificates, so it counts in the content hash and is watched: rotating the file reloads
//! the filters that use it. An env variable is read at each load.

use std::path::Path;

use crate::config::{ConfigIssue, FilterConfig};
use crate::tls::Files;

/// Replace every reference in `filters`' settings by its value (files relative to `base`,
/// kept in `files`); every reference that cannot be resolved is an issue naming its field.
pub(crate) fn resolve<'a>(
    filters: impl IntoIterator<Item = (&'a String, &'a mut FilterConfig)>,
    base: &Path,
    files: &mut Files,
) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    for (name, filter) in filters {
        for (key, value) in filter.settings.iter_mut() {
            resolve_value(
                value,
                format!("filters.{name}.{key}"),
                base,
                files,
                &mut issues,
            );
        }
    }
    issues
}

fn resolve_value(
    value: &mut toml::Value,
    field: String,
    base: &Path,
    files: &mut Files,
    issues: &mut Vec<ConfigIssue>,
) {
    match value {
        toml::Value::Table(table) => match reference(table) {
            Some(Ok(Reference::Env(name))) => match std::env::var(name) {
                Ok(text) => *value = toml::Value::String(text),
                Err(e) => issues.push(issue(field + ".from_env", format!("{name}: {e}"))),
            },
            Some(Ok(Reference::File(name))) => {
                let path = base.join(name);
                match files.read_text(&path) {
                    Ok(text) => *value = toml::Value::String(text),
                    Err(e) => issues.push(issue(
                        field + ".from_file",
                        format!("cannot read {}: {e}", path.display()),
                    )),
                }
            }
            Some(Err(message)) => issues.push(issue(field, message)),
            None => {
                for (key, inner) in table.iter_mut() {
                    resolve_value(inner, format!("{field}.{key}"), base, files, issues);
                }
            }
        },
        toml::Value::Array(items) => {
            for (i, inner) in items.iter_mut().enumerate() {
                resolve_value(inner, format!("{field}[{i}]"), base, files, issues);
            }
        }
        _ => {}
    }
}

enum Reference<'t> {
    Env(&'t str),
    File(&'t str),
}

/// The reference `table` is, if it has a `from_env` or `from_file` key (and then nothing
/// else, as a string).
fn reference(table: &toml::Table) -> Option<Result<Reference<'_>, String>> {
    let key = ["from_env", "from_file"]
        .into_iter()
        .find(|k| table.contains_key(*k))?;
    if table.len() > 1 {
        return Some(Err(format!(
            "a `{key}` reference takes no other key (found {})",
            table
                .keys()
                .filter(|k| *k != key)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Some(match (key, table[key].as_str()) {
        (_, None) | (_, Some("")) => Err(format!("{key}: expected a non-empty string")),
        ("from_env", Some(name)) => Ok(Reference::Env(name)),
        (_, Some(name)) => Ok(Reference::File(name)),
    })
}

fn issue(field: String, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        field,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn resolved(settings: &str, base: &Path) -> Result<toml::Table, Vec<String>> {
        let text = format!("[filters.f]\nkind = \"x\"\n{settings}");
        let mut config: Config = toml::from_str(&text).unwrap();
        let mut files = Files::default();
        let issues = resolve(config.filters.iter_mut(), base, &mut files);
        if issues.is_empty() {
            Ok(config.filters.remove("f").unwrap().settings)
        } else {
            Err(issues.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn references_anywhere_in_the_settings_become_their_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "s3cret\n").unwrap();
        std::fs::write(dir.path().join("crlf"), "a\r\n").unwrap();
        std::fs::write(dir.path().join("two"), "b\n\n").unwrap();
        // A variable no other test uses.
        std::env::set_var("GATEHOUSE_SECRETS_TEST_URL", "redis://:pw@h:6379");
        let settings = resolved(
            "secret = { from_file = \"key\" }\n\
             url = { from_env = \"GATEHOUSE_SECRETS_TEST_URL\" }\n\
             list = [{ from_file = \"crlf\" }, \"plain\"]\n\
             nested = { deep = { from_file = \"two\" } }\n\
             other = { file = \"not a reference\" }",
            dir.path(),
        )
        .unwrap();
        assert_eq!(settings["secret"].as_str(), Some("s3cret"));
        assert_eq!(settings["url"].as_str(), Some("redis://:pw@h:6379"));
        assert_eq!(settings["list"][0].as_str(), Some("a"));
        assert_eq!(settings["list"][1].as_str(), Some("plain"));
        // Only one line break goes: a value may end in one of its own.
        assert_eq!(settings["nested"]["deep"].as_str(), Some("b\n"));
        assert_eq!(settings["other"]["file"].as_str(), Some("not a reference"));
    }

    #[test]
    fn a_reference_that_cannot_be_resolved_names_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let issues = resolved(
            "a = { from_file = \"missing\" }\n\
             b = { from_env = \"GATEHOUSE_SECRETS_TEST_UNSET\" }\n\
             c = { from_env = \"X\", default = \"y\" }\n\
             d = { from_file = 3 }",
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(issues.len(), 4, "{issues:?}");
        assert!(
            issues[0].starts_with("filters.f.a.from_file: cannot read"),
            "{issues:?}"
        );
        assert!(issues[0].contains("missing"), "{issues:?}");
        assert!(
            issues[1].starts_with("filters.f.b.from_env: GATEHOUSE_SECRETS_TEST_UNSET"),
            "{issues:?}"
        );
        assert!(
            issues[2].contains("takes no other key (found default)"),
            "{issues:?}"
        );
        assert!(
            issues[3].contains("d: from_file: expected a non-empty string"),
            "{issues:?}"
        );
    }
}
