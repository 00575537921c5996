//! The card processor behind the service: the [`Processor`] trait, and the deterministic
//! [`SimulatedProcessor`] the service runs with (there is no real network integration).
//!
//! Every operation names the authorization by the payment intent's id (`reference`), the way
//! a processor's idempotency keys work, so a retried call never authorizes twice.
//!
//! Test cards of the simulator (Stripe's numbers; any other valid number is approved, US):
//!
//! | number | outcome | country |
//! |---|---|---|
//! | 4242 4242 4242 4242 | approved | US |
//! | 4000 0000 0000 0002 | declined `card_declined` | US |
//! | 4000 0000 0000 9995 | declined `insufficient_funds` | US |
//! | 4000 0000 0000 9235 | approved, elevated risk (fraud decision `review`) | US |
//! | 4000 0000 0000 0119 | never answers: the service's deadline cuts it off | US |
//! | 4000 0007 6000 0002 | approved | BR |
//! | 4000 0012 4000 0000 | approved | CA |
//! | 5555 5555 5555 4444 | approved (mastercard) | US |
//! | 3782 822463 10005 | approved (amex) | US |
//! | 6011 1111 1111 1117 | approved (discover) | US |

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::cards::CardNumber;

/// Why the processor did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessorError {
    /// The issuer said no, with its reason code (`card_declined`, `insufficient_funds`…).
    #[error("declined: {0}")]
    Declined(String),
    /// The processor failed or could not be reached.
    #[error("processor unavailable: {0}")]
    Unavailable(String),
}

/// What the processor keeps for a card instead of its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// The processor's token for the card.
    pub token: String,
    /// The card's issuing country (ISO 3166-1 alpha-2).
    pub country: String,
}

/// The issuer's risk assessment of an approved authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risk {
    /// Nothing unusual.
    Normal,
    /// Approved, but the processor would have it reviewed.
    Elevated,
}

/// An approved authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The issuer's authorization code.
    pub auth_code: String,
    /// The processor's risk assessment.
    pub risk: Risk,
}

/// An authorization as the processor knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizationState {
    /// It never authorized this reference.
    Unknown,
    /// A hold of `amount` is on the card.
    Held {
        /// The issuer's authorization code.
        auth_code: String,
        /// Minor units.
        amount: i64,
    },
    /// `amount` was captured (the rest of the hold released).
    Captured {
        /// Minor units.
        amount: i64,
    },
    /// The hold was released.
    Voided,
}

/// One authorization request.
#[derive(Debug, Clone)]
pub struct Authorize<'a> {
    /// The payment intent's id: the processor's idempotency key for this authorization.
    pub reference: &'a str,
    /// The card's processor token.
    pub token: &'a str,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: &'a str,
}

/// A card processor. Calls may take long: the service bounds [`Processor::authorize`] with
/// its deadline and releases an authorization that came too late with [`Processor::void`].
#[async_trait::async_trait]
pub trait Processor: Send + Sync + 'static {
    /// Exchanges a card number for the processor's token and the card's country.
    async fn tokenize(&self, number: &CardNumber) -> Result<Tokenized, ProcessorError>;
    /// Places a hold of `amount` on the card.
    async fn authorize(&self, req: Authorize<'_>) -> Result<Authorization, ProcessorError>;
    /// Settles `amount` (≤ the hold) of the authorization `reference`; the rest is released.
    async fn capture(&self, reference: &str, amount: i64) -> Result<(), ProcessorError>;
    /// Releases the hold of `reference` (also when there is none: idempotent).
    async fn void(&self, reference: &str) -> Result<(), ProcessorError>;
    /// Returns `amount` of what `reference` captured, once per `refund_id` (a repeated call
    /// with the same `refund_id` answers as the first and refunds nothing more).
    async fn refund(
        &self,
        reference: &str,
        refund_id: &str,
        amount: i64,
    ) -> Result<(), ProcessorError>;

    /// What the processor knows of the authorization `reference` (its hold, capture or
    /// void), so recovery can settle an operation whose answer was lost. A processor without
    /// a lookup answers `Unavailable`, and recovery then repeats the (idempotent) call.
    async fn lookup(&self, _reference: &str) -> Result<AuthorizationState, ProcessorError> {
        Err(ProcessorError::Unavailable(
            "this processor has no lookup".into(),
        ))
    }

    /// What the processor did with the refund `refund_id`: `Some(amount)` when it refunded,
    /// `None` when it never did. A processor without a lookup answers `Unavailable`, and
    /// recovery then repeats the (idempotent) refund call instead.
    async fn refund_status(&self, _refund_id: &str) -> Result<Option<i64>, ProcessorError> {
        Err(ProcessorError::Unavailable(
            "this processor has no refund lookup".into(),
        ))
    }
}

/// How a simulated card behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Approved.
    Approve,
    /// Approved with elevated risk.
    Review,
    /// Declined with this code.
    Decline(&'static str),
    /// Never answers (sleeps for the simulator's hang time).
    Timeout,
}

/// The simulator's test cards: number, behavior, country.
pub const TEST_CARDS: &[(&str, Behavior, &str)] = &[
    ("4242424242424242", Behavior::Approve, "US"),
    ("4000000000000002", Behavior::Decline("card_declined"), "US"),
    (
        "4000000000009995",
        Behavior::Decline("insufficient_funds"),
        "US",
    ),
    ("4000000000009235", Behavior::Review, "US"),
    ("4000000000000119", Behavior::Timeout, "US"),
    ("4000000760000002", Behavior::Approve, "BR"),
    ("4000001240000000", Behavior::Approve, "CA"),
    ("5555555555554444", Behavior::Approve, "US"),
    ("378282246310005", Behavior::Approve, "US"),
    ("6011111111111117", Behavior::Approve, "US"),
];

/// The simulator's own key for its tokens (a simulator has no secrets worth keeping).
const SIM_KEY: &[u8] = b"gatehouse-simulated-processor";

/// A processor that decides by card, at once and the same way every time. Its token for a
/// card is `sim_` + an HMAC of the number, so it knows which test card a token is without
/// anyone storing the number. It counts what it was asked, for tests.
pub struct SimulatedProcessor {
    cards: HashMap<String, (Behavior, &'static str)>,
    hang: Duration,
    authorizations: AtomicU64,
    /// Authorizations by reference, with how often capture and void were asked of each.
    auths: std::sync::Mutex<HashMap<String, SimAuth>>,
    /// Refunds by refund id: (amount, calls), so a repeated call refunds nothing more.
    refunds: std::sync::Mutex<HashMap<String, (i64, u64)>>,
}

impl Default for SimulatedProcessor {
    fn default() -> Self {
        SimulatedProcessor::new(Duration::from_secs(120))
    }
}

impl std::fmt::Debug for SimulatedProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedProcessor")
            .field("hang", &self.hang)
            .finish_non_exhaustive()
    }
}

/// How often the simulator was asked each operation of one reference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    /// Authorizations (approved ones; a decline keeps no record).
    pub authorize: u64,
    /// Captures.
    pub capture: u64,
    /// Voids.
    pub void: u64,
}

/// One authorization at the simulator.
#[derive(Debug)]
struct SimAuth {
    state: AuthorizationState,
    calls: Calls,
}

impl SimAuth {
    fn new(state: AuthorizationState) -> SimAuth {
        SimAuth {
            state,
            calls: Calls::default(),
        }
    }
}

fn sim_token(digits: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SIM_KEY).expect("HMAC takes keys of any length");
    mac.update(digits.as_bytes());
    format!("sim_{}", hex::encode(&mac.finalize().into_bytes()[..16]))
}

impl SimulatedProcessor {
    /// A simulator whose timeout card hangs for `hang` before answering.
    pub fn new(hang: Duration) -> SimulatedProcessor {
        let cards = TEST_CARDS
            .iter()
            .map(|(n, b, c)| (sim_token(n), (*b, *c)))
            .collect();
        SimulatedProcessor {
            cards,
            hang,
            authorizations: AtomicU64::new(0),
            auths: std::sync::Mutex::default(),
            refunds: std::sync::Mutex::default(),
        }
    }

    /// Authorizations asked for (each call, whatever its outcome).
    pub fn authorizations(&self) -> u64 {
        self.authorizations.load(Ordering::SeqCst)
    }

    /// Authorizations captured (each once, however often its capture was asked for).
    pub fn captures(&self) -> u64 {
        self.count(|a| matches!(a.state, AuthorizationState::Captured { .. }))
    }

    /// Authorizations voided (each once, however often its void was asked for; a void of
    /// a reference never authorized counts too: it stops a late hold).
    pub fn voids(&self) -> u64 {
        self.count(|a| a.state == AuthorizationState::Voided)
    }

    /// How often each operation was asked of the authorization `reference`.
    pub fn calls(&self, reference: &str) -> Calls {
        self.auths
            .lock()
            .expect("auths")
            .get(reference)
            .map_or(Calls::default(), |a| a.calls)
    }

    fn count(&self, which: impl Fn(&SimAuth) -> bool) -> u64 {
        let auths = self.auths.lock().expect("auths");
        auths.values().filter(|a| which(a)).count() as u64
    }

    /// Refunds done (each refund id once, however often it was asked).
    pub fn refunds(&self) -> u64 {
        self.refunds.lock().expect("refunds").len() as u64
    }

    /// How often the refund `refund_id` was asked for.
    pub fn refund_calls(&self, refund_id: &str) -> u64 {
        self.refunds
            .lock()
            .expect("refunds")
            .get(refund_id)
            .map_or(0, |(_, calls)| *calls)
    }

    fn behavior(&self, token: &str) -> Behavior {
        self.cards
            .get(token)
            .map(|(b, _)| *b)
            .unwrap_or(Behavior::Approve)
    }
}

#[async_trait::async_trait]
impl Processor for SimulatedProcessor {
    async fn tokenize(&self, number: &CardNumber) -> Result<Tokenized, ProcessorError> {
        let token = sim_token(number.digits());
        let country = self.cards.get(&token).map(|(_, c)| *c).unwrap_or("US");
        Ok(Tokenized {
            token,
            country: country.to_owned(),
        })
    }

    async fn authorize(&self, req: Authorize<'_>) -> Result<Authorization, ProcessorError> {
        self.authorizations.fetch_add(1, Ordering::SeqCst);
        let auth_code = format!(
            "sim_auth_{}",
            &req.reference[req.reference.len().saturating_sub(12)..]
        );
        let risk = match self.behavior(req.token) {
            Behavior::Approve => Risk::Normal,
            Behavior::Review => Risk::Elevated,
            Behavior::Decline(code) => return Err(ProcessorError::Declined(code.to_owned())),
            Behavior::Timeout => {
                tokio::time::sleep(self.hang).await;
                return Err(ProcessorError::Unavailable(
                    "the issuer did not answer".into(),
                ));
            }
        };
        let mut auths = self.auths.lock().expect("auths");
        // The reference is the idempotency key: a repeated call answers as the first.
        let auth = auths.entry(req.reference.to_owned()).or_insert_with(|| {
            SimAuth::new(AuthorizationState::Held {
                auth_code: auth_code.clone(),
                amount: req.amount,
            })
        });
        auth.calls.authorize += 1;
        match &auth.state {
            AuthorizationState::Voided => {
                Err(ProcessorError::Declined("authorization_voided".into()))
            }
            _ => Ok(Authorization { auth_code, risk }),
        }
    }

    async fn capture(&self, reference: &str, amount: i64) -> Result<(), ProcessorError> {
        let mut auths = self.auths.lock().expect("auths");
        let Some(auth) = auths.get_mut(reference) else {
            return Err(ProcessorError::Declined("no_authorization".into()));
        };
        auth.calls.capture += 1;
        match auth.state {
            AuthorizationState::Held { amount: held, .. } if amount <= held => {
                auth.state = AuthorizationState::Captured { amount };
                Ok(())
            }
            // Idempotent: the same capture again changes nothing.
            AuthorizationState::Captured { amount: done } if done == amount => Ok(()),
            AuthorizationState::Voided => {
                Err(ProcessorError::Declined("authorization_voided".into()))
            }
            _ => Err(ProcessorError::Declined("amount_mismatch".into())),
        }
    }

    async fn void(&self, reference: &str) -> Result<(), ProcessorError> {
        let mut auths = self.auths.lock().expect("auths");
        let auth = auths
            .entry(reference.to_owned())
            .or_insert_with(|| SimAuth::new(AuthorizationState::Unknown));
        auth.calls.void += 1;
        match auth.state {
            AuthorizationState::Captured { .. } => {
                Err(ProcessorError::Declined("already_captured".into()))
            }
            _ => {
                auth.state = AuthorizationState::Voided;
                Ok(())
            }
        }
    }

    async fn lookup(&self, reference: &str) -> Result<AuthorizationState, ProcessorError> {
        Ok(self
            .auths
            .lock()
            .expect("auths")
            .get(reference)
            .map_or(AuthorizationState::Unknown, |a| a.state.clone()))
    }

    async fn refund(
        &self,
        _reference: &str,
        refund_id: &str,
        amount: i64,
    ) -> Result<(), ProcessorError> {
        let mut refunds = self.refunds.lock().expect("refunds");
        refunds.entry(refund_id.to_owned()).or_insert((amount, 0)).1 += 1;
        Ok(())
    }

    async fn refund_status(&self, refund_id: &str) -> Result<Option<i64>, ProcessorError> {
        Ok(self
            .refunds
            .lock()
            .expect("refunds")
            .get(refund_id)
            .map(|(amount, _)| *amount))
    }
}
