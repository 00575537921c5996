//! Password hashing: argon2id at OWASP's minimum or above (m = 19 MiB, t = 2, p = 1), run
//! on the blocking pool so a login never stalls the async workers.
//!
//! An unknown email is checked against a dummy hash made with the same parameters, so it
//! costs what a wrong password costs and the answer's timing reveals nothing.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// argon2id parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl HashParams {
    /// OWASP's minimum for argon2id: 19 MiB, 2 iterations, 1 lane.
    pub const OWASP: HashParams = HashParams {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };

    fn argon2(&self) -> Argon2<'static> {
        let params =
            Params::new(self.m_kib, self.t, self.p, None).unwrap_or_else(|_| Params::default());
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }
}

/// Why a password operation failed (never contains the password).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The hashing library failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The blocking task died.
    #[error("password hashing task failed")]
    Task,
}

/// Hashes and verifies passwords with fixed parameters.
#[derive(Clone)]
pub struct Passwords {
    params: HashParams,
    dummy: String,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// What a verification found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    /// The password matches.
    Yes {
        /// The stored hash uses other parameters: store a new hash.
        rehash: bool,
    },
    /// It does not (or there was no account).
    No,
}

impl Passwords {
    /// A hasher with `params` (hashes a dummy password once, for unknown accounts).
    pub fn new(params: HashParams) -> Result<Passwords, PasswordError> {
        let dummy = hash_blocking(params, "not-a-real-password-at-all")?;
        Ok(Passwords { params, dummy })
    }

    /// The parameters new hashes use.
    pub fn params(&self) -> HashParams {
        self.params
    }

    /// Hashes `password` (a PHC string: `$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let params = self.params;
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || hash_blocking(params, &password))
            .await
            .map_err(|_| PasswordError::Task)?
    }

    /// Checks `password` against `stored`, or against the dummy hash when there is no
    /// account, so both take the same time.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Verified {
        let exists = stored.is_some();
        let stored = stored.unwrap_or(&self.dummy).to_owned();
        let password = password.to_owned();
        let current = self.params;
        let outcome = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return Verified::No;
            };
            let argon2 = current.argon2();
            if argon2
                .verify_password(password.as_bytes(), &parsed)
                .is_err()
            {
                return Verified::No;
            }
            Verified::Yes {
                rehash: params_of(&parsed) != Some(current),
            }
        })
        .await
        .unwrap_or(Verified::No);
        if exists {
            outcome
        } else {
            Verified::No
        }
    }
}

fn hash_blocking(params: HashParams, password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    params
        .argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// The argon2id parameters a stored hash was made with (`None`: not argon2id).
pub fn params_of(hash: &PasswordHash<'_>) -> Option<HashParams> {
    if hash.algorithm.as_str() != "argon2id" {
        return None;
    }
    let p = Params::try_from(hash).ok()?;
    Some(HashParams {
        m_kib: p.m_cost(),
        t: p.t_cost(),
        p: p.p_cost(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let p = Passwords::new(HashParams::OWASP).unwrap();
        let h = p.hash("correct horse battery staple").await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert_eq!(
            p.verify("correct horse battery staple", Some(&h)).await,
            Verified::Yes { rehash: false }
        );
        assert_eq!(p.verify("wrong", Some(&h)).await, Verified::No);
        assert_eq!(
            p.verify("not-a-real-password-at-all", None).await,
            Verified::No,
            "the dummy hash never lets anyone in"
        );
    }

    #[tokio::test]
    async fn a_hash_with_weaker_parameters_asks_for_a_rehash() {
        let weak = Passwords::new(HashParams {
            m_kib: 8 * 1024,
            t: 1,
            p: 1,
        })
        .unwrap();
        let h = weak.hash("correct horse battery staple").await.unwrap();
        let p = Passwords::new(HashParams::OWASP).unwrap();
        assert_eq!(
            p.verify("correct horse battery staple", Some(&h)).await,
            Verified::Yes { rehash: true }
        );
    }
}
