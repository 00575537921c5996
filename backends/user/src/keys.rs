//! The signing key ring: the active Ed25519 key that signs access tokens, and the public
//! halves of retired keys, published until the tokens they signed have expired.
//!
//! Where the active key comes from, first match wins: the `SIGNING_KEY` setting (PEM text),
//! the `SIGNING_KEY_FILE` setting (a PEM file), or `<DATA_DIR>/user-signing-key.pem`,
//! generated on first start (owner-only permissions). Rotation writes a new key to that file
//! and records the old public key in `retired_keys`; a key given inline cannot be rotated
//! by the service (the operator rotates it where it is kept).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use kit::identity::{LocalKeys, SigningKey};
use kit::{Db, DbError};
use sqlx::Row;

/// Where the active key lives.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// PEM text from the environment: fixed.
    Inline(String),
    /// A PEM file: created when missing, replaced on rotation.
    File(PathBuf),
}

/// Why the key ring could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The key material is not an Ed25519 PKCS#8 key.
    #[error("signing key: {0}")]
    Invalid(String),
    /// Rotation is impossible for an inline key.
    #[error("the signing key is given inline (SIGNING_KEY); rotate it where it is kept")]
    Inline,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The active key plus what the JWKS publishes. Cheap to clone.
#[derive(Clone)]
pub struct KeyRing {
    source: KeySource,
    active: Arc<RwLock<SigningKey>>,
    published: LocalKeys,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("kid", &self.active().kid())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Loads (or, for a missing file, generates and stores) the active key and the retired
    /// keys still to be published.
    pub async fn load(source: KeySource, db: &Db) -> Result<KeyRing, KeyError> {
        let key = match &source {
            KeySource::Inline(pem) => SigningKey::from_pem(pem).map_err(KeyError::Invalid)?,
            KeySource::File(path) => load_or_create(path)?,
        };
        let ring = KeyRing {
            source,
            active: Arc::new(RwLock::new(key)),
            published: LocalKeys::default(),
        };
        ring.republish(db).await?;
        Ok(ring)
    }

    /// The key that signs new tokens.
    pub fn active(&self) -> SigningKey {
        self.active
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The published key set, shared with in-process verifiers (kept current on rotation).
    pub fn published(&self) -> LocalKeys {
        self.published.clone()
    }

    /// The JWKS document.
    pub fn jwks(&self) -> JwkSet {
        self.published.get()
    }

    /// Makes a new active key; the old one's public half stays published for
    /// `keep_published_ms` (the access-token lifetime plus leeway).
    pub async fn rotate(&self, db: &Db, keep_published_ms: i64) -> Result<String, KeyError> {
        let KeySource::File(path) = &self.source else {
            return Err(KeyError::Inline);
        };
        let old = self.active();
        let next = SigningKey::generate();
        let jwk = serde_json::to_string(&old.public_jwk())
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        sqlx::query(
            "INSERT INTO retired_keys (kid, jwk, publish_until) VALUES ($1, $2, $3) \
             ON CONFLICT (kid) DO UPDATE SET publish_until = excluded.publish_until",
        )
        .bind(old.kid())
        .bind(jwk)
        .bind(kit::db::now_ms() + keep_published_ms)
        .execute(db.pool())
        .await
        .map_err(DbError::from)?;
        write_key(path, &next)?;
        let kid = next.kid().to_owned();
        if let Ok(mut a) = self.active.write() {
            *a = next;
        }
        self.republish(db).await?;
        tracing::info!(new_kid = %kid, old_kid = %old.kid(), "signing key rotated");
        Ok(kid)
    }

    /// Rebuilds the published set: the active key plus unexpired retired keys.
    pub async fn republish(&self, db: &Db) -> Result<(), KeyError> {
        let rows = sqlx::query(
            "SELECT jwk FROM retired_keys WHERE publish_until > $1 ORDER BY publish_until DESC",
        )
        .bind(kit::db::now_ms())
        .fetch_all(db.pool())
        .await
        .map_err(DbError::from)?;
        let active = self.active();
        let mut keys = vec![active.public_jwk()];
        for row in rows {
            let text: String = row.get("jwk");
            if let Ok(jwk) = serde_json::from_str::<Jwk>(&text) {
                if jwk.common.key_id.as_deref() != Some(active.kid()) {
                    keys.push(jwk);
                }
            }
        }
        self.published.set(JwkSet { keys });
        Ok(())
    }
}

fn load_or_create(path: &Path) -> Result<SigningKey, KeyError> {
    let err = |reason: String| KeyError::File {
        path: path.to_owned(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(pem) => SigningKey::from_pem(&pem).map_err(err),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate();
            write_key(path, &key)?;
            tracing::info!(path = %path.display(), kid = %key.kid(), "generated a new signing key");
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes the key to a temporary file with owner-only permissions and renames it over
/// `path`, so a crash never leaves half a key.
fn write_key(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    kit::secret::write_private(path, key.to_pem().as_bytes()).map_err(|e| KeyError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}
