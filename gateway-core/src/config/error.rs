//! The error of a config that cannot be served.

use std::path::PathBuf;

use super::ConfigIssue;

/// A config that cannot be served. The message names the file and, where it can, the line,
/// column or field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or a value of the wrong type.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// Parsed, but inconsistent: every problem found, each with its field path.
    #[error("{}: {} problem(s):\n{}", path.display(), issues.len(), render_issues(issues))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem.
        issues: Vec<ConfigIssue>,
    },
    /// Valid on paper but could not be built (should not happen after validation).
    #[error("{}: {message}", path.display())]
    Build {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

impl ConfigError {
    /// Each problem as one line (`file:line:col: …` or `file: field: …`).
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { path, issues } => issues
                .iter()
                .map(|i| format!("{}: {i}", path.display()))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

fn render_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}
