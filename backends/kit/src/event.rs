//! The event envelope every service publishes and consumes, and the topic names and
//! patterns that route it.
//!
//! A topic is dot-separated tokens of ASCII letters, digits, `_` and `-`
//! (`user.registered`, `order.line-added`): it becomes a NATS subject under the bus's
//! prefix, so it must not contain spaces or wildcards. A pattern is a topic whose tokens may
//! be `*` (exactly one token) and whose last token may be `>` (one or more tokens), as in
//! NATS: `user.*`, `order.>`, `>`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A fact a service tells the world, as it travels on the bus (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// A UUIDv7: unique, time-ordered, and the bus's deduplication key (`Nats-Msg-Id`) and
    /// the consumers' inbox key, so a republished event is recognised downstream.
    pub id: String,
    /// What happened, e.g. `user.registered`; consumers subscribe by topic pattern.
    pub topic: String,
    /// When the producing transaction recorded it, in Unix milliseconds.
    pub occurred_at: i64,
    /// The event's data, as the producer serialized it.
    pub payload: serde_json::Value,
    /// The W3C `traceparent` of the work that recorded it (see [`crate::trace`]), so the
    /// consumers' work joins its trace. Absent from envelopes of events recorded outside
    /// any traced work, and from those of older producers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Event {
    /// The payload as the type the consumer expects.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }
}

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?} is invalid: {reason}")]
pub struct TopicError {
    /// `topic` or `pattern`.
    pub kind: &'static str,
    /// What was given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn is_plain_token(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks that `topic` can be published: non-empty dot-separated plain tokens.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    if topic.split('.').all(is_plain_token) {
        Ok(())
    } else {
        Err(TopicError {
            kind: "topic",
            value: topic.to_owned(),
            reason: "expected dot-separated tokens of letters, digits, '_' and '-'",
        })
    }
}

/// Checks that `pattern` can be subscribed to: plain tokens, `*`, and `>` only at the end.
pub fn validate_pattern(pattern: &str) -> Result<(), TopicError> {
    let tokens: Vec<&str> = pattern.split('.').collect();
    let last = tokens.len() - 1;
    let ok = tokens
        .iter()
        .enumerate()
        .all(|(i, t)| is_plain_token(t) || *t == "*" || (*t == ">" && i == last));
    if ok {
        Ok(())
    } else {
        Err(TopicError {
            kind: "pattern",
            value: pattern.to_owned(),
            reason: "expected dot-separated tokens, '*' for one token, '>' last for the rest",
        })
    }
}

/// Whether `topic` matches `pattern` (NATS subject rules; both assumed valid).
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut topic = topic.split('.');
    for p in pattern.split('.') {
        if p == ">" {
            return topic.next().is_some();
        }
        match topic.next() {
            Some(t) if p == "*" || p == t => {}
            _ => return false,
        }
    }
    topic.next().is_none()
}

/// Checks a durable consumer name: one plain token (no dots, so it is a valid NATS name).
pub(crate) fn validate_consumer(name: &str) -> Result<(), TopicError> {
    if is_plain_token(name) {
        Ok(())
    } else {
        Err(TopicError {
            kind: "consumer name",
            value: name.to_owned(),
            reason: "expected letters, digits, '_' and '-' only",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_nats_subjects() {
        let table = [
            ("user.registered", "user.registered", true),
            ("user.registered", "user.deleted", false),
            ("user.*", "user.registered", true),
            ("user.*", "user", false),
            ("user.*", "user.a.b", false),
            ("user.>", "user.a.b", true),
            ("user.>", "user", false),
            ("*.registered", "user.registered", true),
            (">", "anything.at.all", true),
            ("user", "user.registered", false),
        ];
        for (pattern, topic, want) in table {
            assert_eq!(matches(pattern, topic), want, "{pattern} ~ {topic}");
        }
    }

    #[test]
    fn topics_and_patterns_are_checked() {
        for ok in ["user.registered", "a", "order.line-added", "x_1.y"] {
            assert!(validate_topic(ok).is_ok(), "{ok}");
            assert!(validate_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "user.", ".user", "user..x", "user.*", "user.>", "a b", "ü",
        ] {
            assert!(validate_topic(bad).is_err(), "{bad:?}");
        }
        for ok in ["user.*", "user.>", ">", "*.x.*"] {
            assert!(validate_pattern(ok).is_ok(), "{ok}");
        }
        for bad in ["", ">.x", "user.>.x", "us*er", "a..b"] {
            assert!(validate_pattern(bad).is_err(), "{bad:?}");
        }
    }
}
