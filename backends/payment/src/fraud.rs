//! Fraud rules, evaluated when an intent is confirmed, before the processor is asked.
//!
//! Precedence is fixed: the **allow list** first (a listed customer is allowed whatever
//! else matches), then **block** rules, then **review** rules, each list in the order
//! below; the first rule that matches decides, and its name is stored on the intent with
//! the decision. Nothing matching is `allow` with no rule.
//!
//! - block: `amount_block` (amount > `block_amount`), `customer_velocity_block` (the
//!   customer's intents in the last hour > `block_customer_per_hour`),
//!   `card_velocity_block` (the card's intents in the last hour, any customer, >
//!   `block_card_per_hour`), `country_mismatch_block` (card country ≠ billing country,
//!   when `country_mismatch` is `block`);
//! - review: `amount_review`, `customer_velocity_review`, `card_velocity_review`,
//!   `country_mismatch_review` (when `country_mismatch` is `review`, the default).
//!
//! Counts include the intent being confirmed. Amount thresholds are in minor units of
//! whatever currency the intent uses (no conversion).
//!
//! What a decision does: `block` cancels the intent (`failure_reason` `fraud_blocked`)
//! without asking the processor. `review` authorizes as usual and flags the intent
//! (`fraud.decision` = `review`), as Stripe Radar's review does: the payment goes on and an
//! operator may void or refund it. A processor answering "approved, elevated risk" (test
//! card …9235) turns an `allow` into `review` with rule `processor_elevated_risk`.

use serde::{Deserialize, Serialize};

/// A fraud decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Go on.
    Allow,
    /// Go on, flagged for an operator.
    Review,
    /// Refuse.
    Block,
}

impl Decision {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Review => "review",
            Decision::Block => "block",
        }
    }

    /// From a stored or configured name.
    pub fn parse(s: &str) -> Option<Decision> {
        match s {
            "allow" => Some(Decision::Allow),
            "review" => Some(Decision::Review),
            "block" => Some(Decision::Block),
            _ => None,
        }
    }
}

/// The thresholds and lists; the defaults are the production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Customers allowed whatever else matches.
    pub allow_customers: Vec<String>,
    /// Amounts above this are blocked.
    pub block_amount: i64,
    /// Amounts above this are reviewed.
    pub review_amount: i64,
    /// More intents than this per customer per hour are blocked.
    pub block_customer_per_hour: i64,
    /// More intents than this per customer per hour are reviewed.
    pub review_customer_per_hour: i64,
    /// More intents than this per card per hour are blocked.
    pub block_card_per_hour: i64,
    /// More intents than this per card per hour are reviewed.
    pub review_card_per_hour: i64,
    /// What a card country other than the billing country gets.
    pub country_mismatch: Decision,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            allow_customers: Vec::new(),
            block_amount: 1_000_000,
            review_amount: 200_000,
            block_customer_per_hour: 30,
            review_customer_per_hour: 10,
            block_card_per_hour: 30,
            review_card_per_hour: 10,
            country_mismatch: Decision::Review,
        }
    }
}

/// What the rules look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts<'a> {
    /// The customer paying.
    pub customer_id: &'a str,
    /// Minor units.
    pub amount: i64,
    /// The customer's intents created in the last hour (this one included).
    pub customer_last_hour: i64,
    /// The card's intents created in the last hour (this one included).
    pub card_last_hour: i64,
    /// The card's issuing country.
    pub card_country: &'a str,
    /// The billing country.
    pub billing_country: &'a str,
}

/// A decision and the rule that made it (`None`: nothing matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// What to do.
    pub decision: Decision,
    /// The rule's name.
    pub rule: Option<&'static str>,
}

/// Evaluates `rules` on `facts` in their fixed precedence.
pub fn evaluate(rules: &Rules, facts: &Facts<'_>) -> Outcome {
    let hit = |decision, rule| Outcome {
        decision,
        rule: Some(rule),
    };
    if rules.allow_customers.iter().any(|c| c == facts.customer_id) {
        return hit(Decision::Allow, "allow_list_customer");
    }
    let mismatch = !facts
        .card_country
        .eq_ignore_ascii_case(facts.billing_country);
    if facts.amount > rules.block_amount {
        return hit(Decision::Block, "amount_block");
    }
    if facts.customer_last_hour > rules.block_customer_per_hour {
        return hit(Decision::Block, "customer_velocity_block");
    }
    if facts.card_last_hour > rules.block_card_per_hour {
        return hit(Decision::Block, "card_velocity_block");
    }
    if mismatch && rules.country_mismatch == Decision::Block {
        return hit(Decision::Block, "country_mismatch_block");
    }
    if facts.amount > rules.review_amount {
        return hit(Decision::Review, "amount_review");
    }
    if facts.customer_last_hour > rules.review_customer_per_hour {
        return hit(Decision::Review, "customer_velocity_review");
    }
    if facts.card_last_hour > rules.review_card_per_hour {
        return hit(Decision::Review, "card_velocity_review");
    }
    if mismatch && rules.country_mismatch == Decision::Review {
        return hit(Decision::Review, "country_mismatch_review");
    }
    Outcome {
        decision: Decision::Allow,
        rule: None,
    }
}
