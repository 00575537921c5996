//! The payment service's business metrics, beside the kit's HTTP ones. `confirm` answers
//! 200 whether the card was accepted or not, so the HTTP counters cannot tell a decline from
//! an approval: each outcome is counted where it is recorded, once its transaction
//! committed (a replayed request or a recovered one records nothing twice, so counts nothing
//! twice). Amounts are in minor units, per currency, as the ledger keeps them.

use std::sync::LazyLock;

use kit::Telemetry;
use prometheus::{IntCounterVec, Opts};

/// `payment_authorizations_total{result}`: confirmations that ended, by `approved`,
/// `declined` (the issuer said no), `blocked` (the fraud rules) or `failed` (the processor
/// did not answer, or its answer was lost). Process-wide, like the order saga's counters.
pub static AUTHORIZATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "payment_authorizations_total",
        "Payment confirmations that ended, by result: approved, declined, blocked or failed",
        "result",
    )
});

/// `payment_declines_total{reason}`: declines by the issuer's reason code.
pub static DECLINES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "payment_declines_total",
        "Authorizations the issuer declined, by its reason code",
        "reason",
    )
});

/// `payment_captured_minor_units_total{currency}`: money captured (revenue in).
pub static CAPTURED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "payment_captured_minor_units_total",
        "Money captured, in minor units, by currency",
        "currency",
    )
});

/// `payment_refunded_minor_units_total{currency}`: money refunded (revenue out).
pub static REFUNDED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "payment_refunded_minor_units_total",
        "Money refunded, in minor units, by currency",
        "currency",
    )
});

fn counter(name: &str, help: &str, label: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), &[label]).expect("a valid counter")
}

/// Counts a confirmation that ended canceled with `reason` (`fraud_blocked`, a processor
/// failure, or the issuer's decline code).
pub fn not_authorized(reason: &str) {
    let result = match reason {
        "fraud_blocked" => "blocked",
        r if r.starts_with("processor_") => "failed",
        code => {
            DECLINES.with_label_values(&[code]).inc();
            "declined"
        }
    };
    AUTHORIZATIONS.with_label_values(&[result]).inc();
}

/// Counts `amount` minor units of `currency` into `counter`.
pub fn add(counter: &IntCounterVec, currency: &str, amount: i64) {
    counter
        .with_label_values(&[currency])
        .inc_by(u64::try_from(amount).unwrap_or(0));
}

/// Adds the payment metrics to `telemetry`'s registry.
pub fn register(telemetry: &Telemetry) {
    for c in [&*AUTHORIZATIONS, &*DECLINES, &*CAPTURED, &*REFUNDED] {
        if let Err(e) = telemetry.registry().register(Box::new(c.clone())) {
            tracing::warn!(error = %e, "payment metrics not registered");
        }
    }
    // Every result from the start, at 0: a decline share reads 0, not nothing, before the
    // first decline.
    for result in ["approved", "declined", "blocked", "failed"] {
        AUTHORIZATIONS.with_label_values(&[result]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_counted_as_its_result() {
        let before = |r: &str| AUTHORIZATIONS.with_label_values(&[r]).get();
        let (declined, blocked, failed) = (before("declined"), before("blocked"), before("failed"));
        let code = DECLINES.with_label_values(&["insufficient_funds"]).get();
        not_authorized("insufficient_funds");
        not_authorized("fraud_blocked");
        not_authorized("processor_timeout");
        assert_eq!(before("declined"), declined + 1);
        assert_eq!(before("blocked"), blocked + 1);
        assert_eq!(before("failed"), failed + 1);
        assert_eq!(
            DECLINES.with_label_values(&["insufficient_funds"]).get(),
            code + 1
        );
    }
}
