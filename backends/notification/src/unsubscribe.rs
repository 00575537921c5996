//! One-click unsubscribe links (RFC 8058): `…/notifications/unsubscribe?token=…`, where the
//! token names a user, a category and a channel and is signed with the service's key, so a
//! link cannot be forged or bent to another user or category. POSTing it turns that
//! category off on that channel; it needs no login (a mail client posts it).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::catalog::{Category, Channel};

/// Signs and checks unsubscribe tokens.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Whose preference.
    pub user_id: String,
    /// Which category.
    pub category: Category,
    /// On which channel.
    pub channel: Channel,
}

impl Signer {
    /// A signer with `key` (at least 32 bytes of secret).
    pub fn new(key: Vec<u8>) -> Signer {
        Signer { key }
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(payload.as_bytes());
        mac
    }

    /// The token of `u`.
    pub fn token(&self, u: &Unsubscribe) -> String {
        let payload = format!(
            "{}:{}:{}",
            u.channel.as_str(),
            u.category.as_str(),
            u.user_id
        );
        let tag = self.mac(&payload).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// What `token` says, if this service signed it.
    pub fn check(&self, token: &str) -> Option<Unsubscribe> {
        let (payload, tag) = token.split_once('.')?;
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(&payload).verify_slice(&tag).ok()?;
        let mut parts = payload.splitn(3, ':');
        Some(Unsubscribe {
            channel: Channel::named(parts.next()?),
            category: Category::parse(parts.next()?)?,
            user_id: parts.next()?.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_a_changed_or_foreign_one_is_refused() {
        let s = Signer::new(vec![7; 32]);
        let u = Unsubscribe {
            user_id: "u:1".into(),
            category: Category::Orders,
            channel: Channel::EMAIL,
        };
        let t = s.token(&u);
        assert_eq!(s.check(&t), Some(u.clone()));
        let other = Unsubscribe {
            user_id: "u:2".into(),
            ..u.clone()
        };
        let (_, tag) = t.split_once('.').unwrap();
        let forged = format!("{}.{tag}", s.token(&other).split_once('.').unwrap().0);
        assert_eq!(
            s.check(&forged),
            None,
            "another user's payload with this tag"
        );
        assert_eq!(Signer::new(vec![8; 32]).check(&t), None, "another key");
        for bad in ["", ".", "abc", "a.b.c", &t[..t.len() - 2]] {
            assert_eq!(s.check(bad), None, "{bad}");
        }
    }
}
