//! Verification keys: one configured key (a secret or a PEM file) or a set parsed from a JWKS
//! document, each with the algorithms it may verify.

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// A key and the algorithms it may verify: the configured ones of its family, narrowed by a
/// JWK's own `alg` and curve. A token whose `alg` is not listed here is refused.
pub(crate) struct KeyEntry {
    /// The public key or the shared secret.
    pub key: DecodingKey,
    /// Algorithms this key accepts.
    pub algorithms: Vec<Algorithm>,
}

/// Keys a filter verifies with.
pub(crate) struct KeySet {
    /// Bumped whenever a JWKS refresh brings different keys; verified tokens cached under an
    /// older generation are verified again (a removed key must stop working).
    pub generation: u64,
    /// A configured key answers for every token whatever its `kid`.
    configured: bool,
    keys: Vec<(Option<String>, Arc<KeyEntry>)>,
}

impl KeySet {
    /// The set of one configured key.
    pub fn configured(entry: KeyEntry) -> KeySet {
        KeySet {
            generation: 0,
            configured: true,
            keys: vec![(None, Arc::new(entry))],
        }
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key for a token's `kid`. A token without `kid` is accepted only when the set holds
    /// exactly one key; the `kid` is only ever compared, never used as a path or URL.
    pub fn find(&self, kid: Option<&str>) -> Option<&Arc<KeyEntry>> {
        if self.configured || (kid.is_none() && self.keys.len() == 1) {
            return self.keys.first().map(|(_, k)| k);
        }
        let kid = kid?;
        self.keys
            .iter()
            .find(|(id, _)| id.as_deref() == Some(kid))
            .map(|(_, k)| k)
    }

    /// Parse a JWKS document. Keys that are not for signatures, not of an allowed algorithm, or
    /// not understood are skipped; a document with no usable key is an error.
    pub fn from_jwks(
        body: &[u8],
        allowed: &[Algorithm],
        generation: u64,
    ) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document =
            serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for value in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            if let Some(entry) = jwk_entry(&jwk, allowed) {
                keys.push((jwk.common.key_id.clone(), Arc::new(entry)));
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "the JWKS holds no key usable with the configured algorithms ({})",
                names(allowed)
            ));
        }
        Ok(KeySet {
            generation,
            configured: false,
            keys,
        })
    }
}

/// `"RS256, ES256"`.
pub(crate) fn names(algorithms: &[Algorithm]) -> String {
    algorithms
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The family (and for curves, the one algorithm) a JWK's key material fits.
fn jwk_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => alg.family() == AlgorithmFamily::Rsa,
        AlgorithmParameters::EllipticCurve(p) => matches!(
            (&p.curve, alg),
            (EllipticCurve::P256, Algorithm::ES256) | (EllipticCurve::P384, Algorithm::ES384)
        ),
        AlgorithmParameters::OctetKeyPair(p) => {
            p.curve == EllipticCurve::Ed25519 && alg == Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => alg.family() == AlgorithmFamily::Hmac,
        _ => false,
    }
}

fn jwk_entry(jwk: &Jwk, allowed: &[Algorithm]) -> Option<KeyEntry> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let algorithms: Vec<Algorithm> = match jwk.common.key_algorithm {
        // The JWK pins its algorithm: only that one, and only if the configuration allows it.
        Some(ka) => {
            let alg: Algorithm = ka.to_string().parse().ok()?;
            vec![alg]
        }
        None => allowed.to_vec(),
    };
    let algorithms: Vec<Algorithm> = algorithms
        .into_iter()
        .filter(|a| allowed.contains(a) && jwk_fits(jwk, *a))
        .collect();
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(KeyEntry { key, algorithms })
}

/// The key of `secret = "…"`: HMAC only.
pub(crate) fn from_secret(secret: &str, algorithms: &[Algorithm]) -> Result<KeyEntry, String> {
    if let Some(a) = algorithms
        .iter()
        .find(|a| a.family() != AlgorithmFamily::Hmac)
    {
        return Err(format!(
            "`secret` verifies HS256/HS384/HS512 only, not {a:?}; use `public_key_file` or `jwks_url`"
        ));
    }
    // RFC 7518 §3.2: an HMAC key shorter than the hash output can be brute-forced offline.
    if secret.len() < 32 {
        return Err("`secret` must be at least 32 bytes long (RFC 7518 §3.2)".into());
    }
    Ok(KeyEntry {
        key: DecodingKey::from_secret(secret.as_bytes()),
        algorithms: algorithms.to_vec(),
    })
}

/// The key of `public_key_file = "…"`: one asymmetric family, chosen by the algorithms.
pub(crate) fn from_pem_file(path: &Path, algorithms: &[Algorithm]) -> Result<KeyEntry, String> {
    let family = algorithms.first().map(|a| a.family());
    if algorithms.iter().any(|a| Some(a.family()) != family) {
        return Err(format!(
            "one public key cannot verify algorithms of different families ({})",
            names(algorithms)
        ));
    }
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read public_key_file {}: {e}", path.display()))?;
    let bad = |e: jsonwebtoken::errors::Error| {
        format!(
            "public_key_file {} is not a {} public key in PEM form: {e}",
            path.display(),
            names(algorithms)
        )
    };
    let key = match family {
        Some(AlgorithmFamily::Rsa) => DecodingKey::from_rsa_pem(&pem).map_err(bad)?,
        Some(AlgorithmFamily::Ec) => {
            let key = DecodingKey::from_ec_pem(&pem).map_err(bad)?;
            check_curve(&key, algorithms)?;
            key
        }
        Some(AlgorithmFamily::Ed) => DecodingKey::from_ed_pem(&pem).map_err(bad)?,
        Some(AlgorithmFamily::Hmac) | None => {
            return Err(
                "`public_key_file` verifies RS*, PS*, ES* or EdDSA; use `secret` for HS*".into(),
            )
        }
    };
    Ok(KeyEntry {
        key,
        algorithms: algorithms.to_vec(),
    })
}

/// An EC point is 65 bytes on P-256 and 97 on P-384: refuse a key that cannot verify the
/// configured algorithm rather than fail every token later.
fn check_curve(key: &DecodingKey, algorithms: &[Algorithm]) -> Result<(), String> {
    let len = key.try_get_as_bytes().map(<[u8]>::len).unwrap_or(0);
    let curve_alg = match len {
        65 => Algorithm::ES256,
        97 => Algorithm::ES384,
        _ => return Err("public_key_file holds an EC key on an unsupported curve".into()),
    };
    match algorithms.iter().find(|a| **a != curve_alg) {
        Some(a) => Err(format!(
            "public_key_file holds a key for {curve_alg:?}, which cannot verify {a:?}"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn doc(keys: &str) -> Vec<u8> {
        format!(r#"{{"keys": [{keys}]}}"#).into_bytes()
    }

    #[test]
    fn a_jwk_is_usable_only_with_an_allowed_algorithm_of_its_own_kind() {
        let okp = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{ED_X}","kid":"a"}}"#);
        let set = KeySet::from_jwks(&doc(&okp), &[Algorithm::EdDSA], 1).expect("usable");
        let entry = set.find(Some("a")).expect("found by kid");
        assert_eq!(entry.algorithms, vec![Algorithm::EdDSA]);
        // An Ed25519 key is no use to a filter configured for RS256 only.
        assert!(KeySet::from_jwks(&doc(&okp), &[Algorithm::RS256], 1).is_err());
    }

    #[test]
    fn a_jwk_alg_narrows_and_never_widens() {
        let pinned =
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{ED_X}","kid":"a","alg":"EdDSA"}}"#);
        let set = KeySet::from_jwks(&doc(&pinned), &[Algorithm::EdDSA, Algorithm::ES256], 1)
            .expect("usable");
        assert_eq!(
            set.find(Some("a")).unwrap().algorithms,
            vec![Algorithm::EdDSA]
        );
        // A JWK claiming RS256 for Ed25519 material is skipped.
        let lying =
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{ED_X}","kid":"a","alg":"RS256"}}"#);
        assert!(KeySet::from_jwks(&doc(&lying), &[Algorithm::RS256, Algorithm::EdDSA], 1).is_err());
    }

    #[test]
    fn encryption_keys_and_unknown_entries_are_skipped() {
        let keys = format!(
            r#"{{"kty":"OKP","crv":"Ed25519","x":"{ED_X}","kid":"enc","use":"enc"}},
               {{"kty":"weird","kid":"w"}},
               {{"kty":"OKP","crv":"Ed25519","x":"{ED_X}","kid":"sig","use":"sig"}}"#
        );
        let set = KeySet::from_jwks(&doc(&keys), &[Algorithm::EdDSA], 1).expect("usable");
        assert_eq!(set.len(), 1);
        assert!(set.find(Some("enc")).is_none());
        assert!(set.find(Some("sig")).is_some());
    }

    #[test]
    fn kid_lookup_is_exact_and_a_kidless_token_needs_a_single_key() {
        let keys = format!(
            r#"{{"kty":"OKP","crv":"Ed25519","x":"{ED_X}","kid":"a"}},
               {{"kty":"OKP","crv":"Ed25519","x":"{ED_X}","kid":"b"}}"#
        );
        let set = KeySet::from_jwks(&doc(&keys), &[Algorithm::EdDSA], 1).unwrap();
        assert!(set.find(Some("../../etc/passwd")).is_none());
        assert!(set.find(Some("A")).is_none());
        assert!(set.find(None).is_none());
        let one = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{ED_X}","kid":"a"}}"#);
        let set = KeySet::from_jwks(&doc(&one), &[Algorithm::EdDSA], 1).unwrap();
        assert!(set.find(None).is_some());
    }

    #[test]
    fn garbage_is_not_a_key_set() {
        assert!(KeySet::from_jwks(b"<html>", &[Algorithm::EdDSA], 1).is_err());
        assert!(KeySet::from_jwks(b"{\"keys\": []}", &[Algorithm::EdDSA], 1).is_err());
    }

    #[test]
    fn secrets_are_hmac_only_and_long_enough() {
        let long = "0123456789abcdef0123456789abcdef";
        assert!(from_secret(long, &[Algorithm::HS256, Algorithm::HS512]).is_ok());
        assert!(from_secret("short", &[Algorithm::HS256]).is_err());
        assert!(from_secret(long, &[Algorithm::RS256]).is_err());
    }

    #[test]
    fn pem_files_must_match_the_algorithms() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jwt");
        assert!(from_pem_file(
            &dir.join("rsa.pub.pem"),
            &[Algorithm::RS256, Algorithm::PS256]
        )
        .is_ok());
        assert!(from_pem_file(&dir.join("ec256.pub.pem"), &[Algorithm::ES256]).is_ok());
        assert!(from_pem_file(&dir.join("ec256.pub.pem"), &[Algorithm::ES384]).is_err());
        assert!(from_pem_file(&dir.join("ed25519.pub.pem"), &[Algorithm::EdDSA]).is_ok());
        assert!(from_pem_file(&dir.join("ed25519.pub.pem"), &[Algorithm::RS256]).is_err());
        assert!(from_pem_file(
            &dir.join("rsa.pub.pem"),
            &[Algorithm::RS256, Algorithm::EdDSA]
        )
        .is_err());
        let missing = from_pem_file(&dir.join("nope.pem"), &[Algorithm::EdDSA]);
        assert!(missing.err().unwrap_or_default().contains("cannot read"));
    }
}
