//! What an accepted event measures: the one function both the incremental rollups and the
//! recompute use, so they cannot disagree on meaning, only (if ever) on arithmetic, which
//! the property test checks.
//!
//! | event (origin) | metric | value | currency | dimensions |
//! | --- | --- | --- | --- | --- |
//! | any tracked event (client) | `events` | 1 | | `name` |
//! | `order.placed` | `orders.placed` | order total | ✓ | |
//! | `order.confirmed` | `orders.confirmed`, `revenue` | order total | ✓ | |
//! | `order.confirmed`, per line | `product.revenue` | qty × unit price | ✓ | `product` |
//! | `order.confirmed`, per line | `product.units` | qty | ✓ | `product` |
//! | `order.cancelled` | `orders.cancelled` | 1 | | |
//! | `order.refunded` | `orders.refunded` | refund amount | ✓ | |
//! | `order.refunded`, per line | `product.refunded` | qty × unit price | ✓ | `product` |
//! | `payment.captured` | `payments.captured` | amount | ✓ | |
//! | `payment.refunded` | `payments.refunded` | amount | ✓ | |
//! | `user.registered` | `users.registered` | 1 | | |
//! | `product.viewed` | `products.viewed` | views | | `product` |
//!
//! A client can name its event `order.confirmed`: it still only counts in `events`, since
//! facts come from the bus alone.

use serde_json::Value;

/// The well-formed lines (`sku`, `qty`, `unit_price`) of an order event's `items`.
fn lines(p: &Value) -> impl Iterator<Item = (&str, i64, i64)> {
    p["items"].as_array().into_iter().flatten().filter_map(|l| {
        Some((
            l["sku"].as_str()?,
            l["qty"].as_i64()?,
            l["unit_price"].as_i64()?,
        ))
    })
}

/// The source of domain facts (the bus); every other source is a client.
pub const BUS: &str = "bus";

/// One value an event contributes to a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measure {
    /// The metric's name.
    pub metric: &'static str,
    /// ISO 4217 for money, `""` otherwise.
    pub currency: String,
    /// The value (minor units for money).
    pub value: i64,
    /// Dimensions it is also broken down by: (dimension, value).
    pub dims: Vec<(&'static str, String)>,
}

/// Every metric the service keeps, with what it measures (for the reports' documentation
/// and their check of `metric=`).
pub const METRICS: &[(&str, &str)] = &[
    ("events", "tracked client events (1 each), by name"),
    ("orders.placed", "orders placed: their totals, per currency"),
    (
        "orders.confirmed",
        "orders confirmed: their totals, per currency",
    ),
    ("orders.cancelled", "orders cancelled (1 each)"),
    (
        "orders.refunded",
        "amounts refunded on confirmed orders (cancels and partial refunds), per currency",
    ),
    (
        "product.refunded",
        "refunded line totals, per currency, by product",
    ),
    ("revenue", "confirmed order totals, per currency"),
    (
        "product.revenue",
        "confirmed line totals, per currency, by product",
    ),
    ("product.units", "units confirmed, per currency, by product"),
    ("payments.captured", "amounts captured, per currency"),
    ("payments.refunded", "amounts refunded, per currency"),
    ("users.registered", "accounts registered (1 each)"),
    ("products.viewed", "product page views, by product"),
];

/// The measures of an event `name` from `source` with `properties`.
pub fn measures(source: &str, name: &str, properties: &Value) -> Vec<Measure> {
    if source != BUS {
        return vec![Measure {
            metric: "events",
            currency: String::new(),
            value: 1,
            dims: vec![("name", name.to_owned())],
        }];
    }
    let p = properties;
    let money = |metric: &'static str, amount: &str| -> Option<Measure> {
        Some(Measure {
            metric,
            currency: currency(p)?,
            value: p[amount].as_i64()?,
            dims: Vec::new(),
        })
    };
    let one = |metric: &'static str| Measure {
        metric,
        currency: String::new(),
        value: 1,
        dims: Vec::new(),
    };
    match name {
        "order.placed" => money("orders.placed", "total").into_iter().collect(),
        "order.confirmed" => {
            let mut all: Vec<Measure> = [
                money("orders.confirmed", "total"),
                money("revenue", "total"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if let Some(currency) = currency(p) {
                for (sku, qty, price) in lines(p) {
                    let product = vec![("product", sku.to_owned())];
                    all.push(Measure {
                        metric: "product.revenue",
                        currency: currency.clone(),
                        value: qty.saturating_mul(price),
                        dims: product.clone(),
                    });
                    // Per currency too, so a product's units and revenue add up alike.
                    all.push(Measure {
                        metric: "product.units",
                        currency: currency.clone(),
                        value: qty,
                        dims: product,
                    });
                }
            }
            all
        }
        "order.cancelled" => vec![one("orders.cancelled")],
        "order.refunded" => {
            let mut all: Vec<Measure> = money("orders.refunded", "amount").into_iter().collect();
            if let Some(currency) = currency(p) {
                for (sku, qty, price) in lines(p) {
                    all.push(Measure {
                        metric: "product.refunded",
                        currency: currency.clone(),
                        value: qty.saturating_mul(price),
                        dims: vec![("product", sku.to_owned())],
                    });
                }
            }
            all
        }
        "payment.captured" => money("payments.captured", "amount").into_iter().collect(),
        "payment.refunded" => money("payments.refunded", "amount").into_iter().collect(),
        "user.registered" => vec![one("users.registered")],
        "product.viewed" => match (p["product"].as_str(), p["views"].as_i64()) {
            (Some(product), Some(views)) => vec![Measure {
                metric: "products.viewed",
                currency: String::new(),
                value: views,
                dims: vec![("product", product.to_owned())],
            }],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// `currency` when it is three capital letters.
fn currency(p: &Value) -> Option<String> {
    p["currency"]
        .as_str()
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_confirmed_order_is_revenue_per_currency_and_per_product() {
        let m = measures(
            BUS,
            "order.confirmed",
            &json!({"total": 3500, "currency": "EUR", "items": [
                {"sku": "MUG", "qty": 2, "unit_price": 1250},
                {"sku": "CAP", "qty": 1, "unit_price": 1000}]}),
        );
        let names: Vec<_> = m.iter().map(|m| (m.metric, m.value)).collect();
        assert_eq!(
            names,
            [
                ("orders.confirmed", 3500),
                ("revenue", 3500),
                ("product.revenue", 2500),
                ("product.units", 2),
                ("product.revenue", 1000),
                ("product.units", 1)
            ]
        );
        assert!(m[..3].iter().all(|m| m.currency == "EUR"));
    }

    #[test]
    fn a_refund_is_its_amount_per_currency_and_per_product() {
        let m = measures(
            BUS,
            "order.refunded",
            &json!({"amount": 2500, "currency": "EUR", "items": [
                {"sku": "MUG", "qty": 2, "unit_price": 1250}]}),
        );
        let names: Vec<_> = m.iter().map(|m| (m.metric, m.value)).collect();
        assert_eq!(
            names,
            [("orders.refunded", 2500), ("product.refunded", 2500)]
        );
        assert_eq!(m[1].dims, [("product", "MUG".to_owned())]);
    }

    #[test]
    fn a_client_cannot_pose_as_a_fact() {
        let m = measures(
            "src-1",
            "order.confirmed",
            &json!({"total": 1_000_000, "currency": "EUR"}),
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].metric, "events");
    }

    #[test]
    fn money_without_a_currency_is_not_counted() {
        assert!(measures(BUS, "payment.captured", &json!({"amount": 5})).is_empty());
    }
}
