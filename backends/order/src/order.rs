//! An order as events, and the order as their fold.
//!
//! Events are facts: what the customer asked for, what the saga decided, and what the other
//! services confirmed they did. The state of an order is nothing but [`Order::replay`] of
//! its events, and `GET /orders/{id}` answers exactly that state.
//!
//! Facts about the other services (`InventoryReserved`, `PaymentAuthorized`, …) are
//! recorded whenever they happened, even after the order started compensating: they tell
//! compensation what there is to undo. Decisions (`ConfirmationStarted`,
//! `CompensationStarted`, the terminal events) are only taken from the state they were
//! decided on; the event store's expected-`seq` append guarantees that.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A line of an order: a product and how many, at the price the product service quoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"sku": "MUG-001", "qty": 2, "unit_price": 1250}))]
pub struct Line {
    /// The product's SKU.
    pub sku: String,
    /// How many (at least 1).
    pub qty: i64,
    /// The price of one, in minor units of the order's currency.
    pub unit_price: i64,
}

/// Everything that can happen to an order, in the order the saga makes it happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "PascalCase")]
pub enum OrderEvent {
    /// The customer placed the order at the quoted prices.
    OrderPlaced {
        /// Who placed it.
        customer_id: String,
        /// What, at which prices.
        items: Vec<Line>,
        /// ISO-4217 code of every price and of the total.
        currency: String,
        /// Sum of `qty × unit_price`, minor units.
        total: i64,
        /// The customer's payment method at the payment service.
        payment_method_id: String,
        /// When, Unix ms.
        placed_at: i64,
    },
    /// The product service holds the stock for this order.
    InventoryReserved {
        /// When the reservation lapses unless committed, Unix ms.
        expires_at: i64,
    },
    /// The payment service created the payment intent (not yet authorized).
    PaymentIntentCreated {
        /// Its id at the payment service.
        payment_intent_id: String,
    },
    /// The payment is authorized (`requires_capture`).
    PaymentAuthorized {
        /// The intent authorized.
        payment_intent_id: String,
    },
    /// The saga passed the point of no return: capture and commit follow, and the order
    /// can no longer be cancelled by the customer.
    ConfirmationStarted,
    /// The authorized amount was captured.
    PaymentCaptured {
        /// Minor units captured.
        amount: i64,
    },
    /// The reserved stock was taken out of inventory.
    InventoryCommitted,
    /// Terminal: the order is paid for and its stock taken.
    OrderConfirmed,
    /// A step failed or the customer cancelled: what was done is being undone.
    CompensationStarted {
        /// Why (see [`reasons`]).
        reason: String,
    },
    /// The authorization was released; no money moves.
    PaymentVoided,
    /// A captured payment was refunded in full.
    PaymentRefunded {
        /// Minor units refunded.
        amount: i64,
    },
    /// The reservation was released (or never existed).
    InventoryReleased,
    /// Terminal: nothing of the order is left at the other services.
    OrderCancelled {
        /// Why (the reason compensation started with).
        reason: String,
    },
    /// A refund of a confirmed order was decided: these lines, this amount. Cancelling a
    /// confirmed order is a refund of every line not refunded yet.
    RefundRequested {
        /// The refund's id (the payment service's and the product service's key for it).
        refund_id: String,
        /// Which lines, how many of each.
        items: Vec<RefundLine>,
        /// Sum of `qty × unit_price` of those lines, minor units.
        amount: i64,
        /// Why (see [`reasons`], or the admin's words).
        reason: String,
        /// Whether it cancels the order (every line not refunded yet).
        cancel: bool,
        /// Who asked.
        requested_by: String,
    },
    /// The payment service refunded it.
    RefundPaid {
        /// The refund.
        refund_id: String,
    },
    /// Its lines' stock is back at the product service.
    StockReturned {
        /// The refund.
        refund_id: String,
    },
    /// Paid back and stock returned: the refund is done.
    RefundCompleted {
        /// The refund.
        refund_id: String,
    },
    /// The payment service refused it for good: nothing was paid back or returned.
    RefundFailed {
        /// The refund.
        refund_id: String,
        /// What the payment service said.
        reason: String,
    },
}

/// Why orders are cancelled; the `reason` of `CompensationStarted` and `OrderCancelled`.
pub mod reasons {
    /// A SKU had not enough available stock.
    pub const OUT_OF_STOCK: &str = "out_of_stock";
    /// The payment was not authorized (declined, blocked, timed out); the payment
    /// service's `failure_reason` follows after a colon.
    pub const PAYMENT_FAILED: &str = "payment_failed";
    /// The customer cancelled before confirmation.
    pub const CANCELLED_BY_CUSTOMER: &str = "cancelled_by_customer";
    /// A step did not finish within its deadline; the step's name follows after a colon.
    pub const DEADLINE: &str = "deadline_exceeded";
    /// Another service refused a step for good; the step's name follows after a colon.
    pub const REJECTED: &str = "rejected";
    /// The customer cancelled a confirmed order within the cancellation window (a refund).
    pub const CANCELLED_AFTER_CONFIRMATION: &str = "cancelled_by_customer_after_confirmation";
    /// An admin cancelled a confirmed order (a refund).
    pub const CANCELLED_BY_ADMIN: &str = "cancelled_by_admin";
}

impl OrderEvent {
    /// The event's name, stored in `order_events.type`.
    pub fn name(&self) -> &'static str {
        match self {
            OrderEvent::OrderPlaced { .. } => "OrderPlaced",
            OrderEvent::InventoryReserved { .. } => "InventoryReserved",
            OrderEvent::PaymentIntentCreated { .. } => "PaymentIntentCreated",
            OrderEvent::PaymentAuthorized { .. } => "PaymentAuthorized",
            OrderEvent::ConfirmationStarted => "ConfirmationStarted",
            OrderEvent::PaymentCaptured { .. } => "PaymentCaptured",
            OrderEvent::InventoryCommitted => "InventoryCommitted",
            OrderEvent::OrderConfirmed => "OrderConfirmed",
            OrderEvent::CompensationStarted { .. } => "CompensationStarted",
            OrderEvent::PaymentVoided => "PaymentVoided",
            OrderEvent::PaymentRefunded { .. } => "PaymentRefunded",
            OrderEvent::InventoryReleased => "InventoryReleased",
            OrderEvent::OrderCancelled { .. } => "OrderCancelled",
            OrderEvent::RefundRequested { .. } => "RefundRequested",
            OrderEvent::RefundPaid { .. } => "RefundPaid",
            OrderEvent::StockReturned { .. } => "StockReturned",
            OrderEvent::RefundCompleted { .. } => "RefundCompleted",
            OrderEvent::RefundFailed { .. } => "RefundFailed",
        }
    }
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Placed; stock not yet reserved.
    Pending,
    /// Stock reserved; payment not yet authorized.
    Reserved,
    /// Stock reserved and payment authorized.
    Authorized,
    /// Past the point of no return: capturing and committing.
    Confirming,
    /// Terminal: paid and fulfilled from stock.
    Confirmed,
    /// Undoing what was done.
    Cancelling,
    /// Terminal: nothing reserved, no money held or taken.
    Cancelled,
    /// Confirmed, and a refund is being paid back and its stock returned; it ends
    /// `confirmed` again (lines are left) or `refunded`.
    Refunding,
    /// Terminal: every line was refunded and its stock returned.
    Refunded,
}

impl Status {
    /// The name stored in `orders.status` (and shown by the API).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Reserved => "reserved",
            Status::Authorized => "authorized",
            Status::Confirming => "confirming",
            Status::Confirmed => "confirmed",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
            Status::Refunding => "refunding",
            Status::Refunded => "refunded",
        }
    }

    /// Whether the saga has nothing left to do.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Confirmed | Status::Cancelled | Status::Refunded
        )
    }

    /// The statuses whose saga is finished, as SQL literals for `NOT IN (…)`.
    pub const TERMINAL_SQL: &'static str = "('confirmed', 'cancelled', 'refunded')";
}

/// What the order service knows of the reservation at the product service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InventoryState {
    /// Nothing recorded.
    None,
    /// Held for the order.
    Reserved,
    /// Taken out of stock.
    Committed,
    /// Given back.
    Released,
}

/// What the order service knows of the payment at the payment service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    /// Nothing recorded.
    None,
    /// An intent exists, not authorized.
    Created,
    /// Authorized, money held.
    Authorized,
    /// Captured, money taken.
    Captured,
    /// Authorization released.
    Voided,
    /// Captured and given back.
    Refunded,
}

/// A line of a refund: a SKU of the order and how many of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"sku": "MUG-001", "qty": 1}))]
pub struct RefundLine {
    /// A SKU of the order.
    pub sku: String,
    /// How many (at least 1, at most what is left of the line).
    pub qty: i64,
}

/// Where a refund is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Being paid back and its stock returned.
    Pending,
    /// Paid back and its stock returned.
    Completed,
    /// The payment service refused it: nothing was paid back or returned, and its lines
    /// are refundable again.
    Failed,
}

/// A refund of a confirmed order, as its events leave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5f9-0a1b-7c2d-8e3f-405162738495",
    "items": [{"sku": "MUG-001", "qty": 1}], "amount": 1250,
    "reason": "one mug arrived broken", "cancel": false,
    "requested_by": "0193a5e0-0000-7000-8000-000000000001",
    "requested_at": 1733403600000_i64, "status": "completed",
    "paid": true, "stock_returned": true, "failure_reason": null
}))]
pub struct OrderRefund {
    /// Its id.
    pub id: String,
    /// Which lines, how many of each.
    pub items: Vec<RefundLine>,
    /// Minor units of the order's currency.
    pub amount: i64,
    /// Why.
    pub reason: String,
    /// Whether it cancelled the order.
    pub cancel: bool,
    /// Who asked.
    pub requested_by: String,
    /// When, Unix ms.
    pub requested_at: i64,
    /// Where it is.
    pub status: RefundStatus,
    /// Whether the payment service refunded it.
    pub paid: bool,
    /// Whether its stock is back.
    pub stock_returned: bool,
    /// Why the payment service refused it, `null` otherwise.
    #[schema(required = true)]
    pub failure_reason: Option<String>,
}

/// An order: the fold of its events. This is what `GET /orders/{id}` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5f2-8d00-7b4c-a1b2-c3d4e5f60718",
    "customer_id": "0193a5e0-1a2b-7c3d-8e4f-5a6b7c8d9e0f",
    "status": "confirmed",
    "items": [{"sku": "MUG-001", "qty": 2, "unit_price": 1250}],
    "currency": "EUR", "total": 2500,
    "payment_method_id": "0193a5e8-4f00-7d1e-9a2b-3c4d5e6f7a8b",
    "payment_intent_id": "0193a5f2-8e10-7f2a-b3c4-d5e6f7a8b9c0",
    "inventory": "committed", "payment": "captured", "cancel_reason": null,
    "placed_at": 1733400000000_i64, "confirmed_at": 1733400001250_i64,
    "updated_at": 1733400001250_i64, "version": 8, "refunds": [], "amount_refunded": 0
}))]
pub struct Order {
    /// The order's id.
    pub id: String,
    /// Who placed it.
    pub customer_id: String,
    /// Where it is in its life.
    pub status: Status,
    /// What was ordered, at which prices.
    pub items: Vec<Line>,
    /// ISO-4217 code of the prices and the total.
    pub currency: String,
    /// Sum of the lines, minor units.
    pub total: i64,
    /// The payment method charged.
    pub payment_method_id: String,
    /// The payment intent at the payment service, once created (`null` before).
    #[schema(required = true)]
    pub payment_intent_id: Option<String>,
    /// What is known of the reservation.
    pub inventory: InventoryState,
    /// What is known of the payment.
    pub payment: PaymentState,
    /// Why the order is (being) cancelled, `null` otherwise: `out_of_stock`,
    /// `cancelled_by_customer`, or `payment_failed`, `deadline_exceeded` or `rejected`
    /// followed by `:` and what failed (e.g. `payment_failed:card_declined`).
    #[schema(required = true)]
    pub cancel_reason: Option<String>,
    /// When it was placed, Unix ms.
    pub placed_at: i64,
    /// When it was confirmed, Unix ms (`null` before).
    #[schema(required = true)]
    #[serde(default)]
    pub confirmed_at: Option<i64>,
    /// When its last event was recorded, Unix ms.
    pub updated_at: i64,
    /// How many events it has: the `seq` of the last one (the expected `seq` of the next
    /// append is this plus one).
    pub version: i64,
    /// Refunds after confirmation, oldest first (cancelling a confirmed order is one).
    #[serde(default)]
    pub refunds: Vec<OrderRefund>,
    /// What the completed refunds paid back, minor units.
    #[serde(default)]
    pub amount_refunded: i64,
}

/// An event as stored: its position and when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recorded {
    /// 1, 2, … per order.
    pub seq: i64,
    /// When it was appended, Unix ms.
    pub recorded_at: i64,
    /// The event.
    pub event: OrderEvent,
}

/// Events that do not fit the order's history (a bug or a tampered store).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FoldError {
    /// The first event is not `OrderPlaced`, or a later one is.
    #[error("order {order_id}: event {seq} ({name}) cannot start or repeat an order")]
    Placement {
        /// The order.
        order_id: String,
        /// The offending event's position.
        seq: i64,
        /// The offending event's name.
        name: &'static str,
    },
}

impl Order {
    /// The state after `events` (in `seq` order); `None` for no events.
    pub fn replay(order_id: &str, events: &[Recorded]) -> Result<Option<Order>, FoldError> {
        let mut order: Option<Order> = None;
        for r in events {
            order = Some(Order::step(order_id, order, r)?);
        }
        Ok(order)
    }

    /// One step of the fold: the state after `r`, given the state before it (`None` before
    /// the first event).
    pub fn step(order_id: &str, before: Option<Order>, r: &Recorded) -> Result<Order, FoldError> {
        match before {
            None => Order::start(order_id, r),
            Some(mut o) => {
                o.apply(order_id, r)?;
                Ok(o)
            }
        }
    }

    fn start(order_id: &str, r: &Recorded) -> Result<Order, FoldError> {
        let OrderEvent::OrderPlaced {
            customer_id,
            items,
            currency,
            total,
            payment_method_id,
            placed_at,
        } = &r.event
        else {
            return Err(FoldError::Placement {
                order_id: order_id.to_owned(),
                seq: r.seq,
                name: r.event.name(),
            });
        };
        Ok(Order {
            id: order_id.to_owned(),
            customer_id: customer_id.clone(),
            status: Status::Pending,
            items: items.clone(),
            currency: currency.clone(),
            total: *total,
            payment_method_id: payment_method_id.clone(),
            payment_intent_id: None,
            inventory: InventoryState::None,
            payment: PaymentState::None,
            cancel_reason: None,
            placed_at: *placed_at,
            confirmed_at: None,
            updated_at: r.recorded_at,
            version: r.seq,
            refunds: Vec::new(),
            amount_refunded: 0,
        })
    }

    /// Applies one later event. Facts never move the status backwards; only the forward
    /// path (before compensation started) advances it.
    fn apply(&mut self, order_id: &str, r: &Recorded) -> Result<(), FoldError> {
        let forward = !matches!(self.status, Status::Cancelling | Status::Cancelled);
        match &r.event {
            OrderEvent::OrderPlaced { .. } => {
                return Err(FoldError::Placement {
                    order_id: order_id.to_owned(),
                    seq: r.seq,
                    name: r.event.name(),
                })
            }
            OrderEvent::InventoryReserved { .. } => {
                self.inventory = InventoryState::Reserved;
                if forward {
                    self.status = Status::Reserved;
                }
            }
            OrderEvent::PaymentIntentCreated { payment_intent_id } => {
                self.payment_intent_id = Some(payment_intent_id.clone());
                self.payment = PaymentState::Created;
            }
            OrderEvent::PaymentAuthorized { payment_intent_id } => {
                self.payment_intent_id = Some(payment_intent_id.clone());
                self.payment = PaymentState::Authorized;
                if forward {
                    self.status = Status::Authorized;
                }
            }
            OrderEvent::ConfirmationStarted => self.status = Status::Confirming,
            OrderEvent::PaymentCaptured { .. } => self.payment = PaymentState::Captured,
            OrderEvent::InventoryCommitted => self.inventory = InventoryState::Committed,
            OrderEvent::OrderConfirmed => {
                self.status = Status::Confirmed;
                self.confirmed_at = Some(r.recorded_at);
            }
            OrderEvent::CompensationStarted { reason } => {
                self.status = Status::Cancelling;
                self.cancel_reason = Some(reason.clone());
            }
            OrderEvent::PaymentVoided => self.payment = PaymentState::Voided,
            OrderEvent::PaymentRefunded { .. } => self.payment = PaymentState::Refunded,
            OrderEvent::InventoryReleased => self.inventory = InventoryState::Released,
            OrderEvent::OrderCancelled { reason } => {
                self.status = Status::Cancelled;
                self.cancel_reason = Some(reason.clone());
            }
            OrderEvent::RefundRequested {
                refund_id,
                items,
                amount,
                reason,
                cancel,
                requested_by,
            } => {
                self.refunds.push(OrderRefund {
                    id: refund_id.clone(),
                    items: items.clone(),
                    amount: *amount,
                    reason: reason.clone(),
                    cancel: *cancel,
                    requested_by: requested_by.clone(),
                    requested_at: r.recorded_at,
                    status: RefundStatus::Pending,
                    paid: false,
                    stock_returned: false,
                    failure_reason: None,
                });
                self.status = Status::Refunding;
            }
            OrderEvent::RefundPaid { refund_id } => {
                if let Some(f) = self.refund_mut(refund_id) {
                    f.paid = true;
                }
            }
            OrderEvent::StockReturned { refund_id } => {
                if let Some(f) = self.refund_mut(refund_id) {
                    f.stock_returned = true;
                }
            }
            OrderEvent::RefundCompleted { refund_id } => {
                if let Some(f) = self.refund_mut(refund_id) {
                    f.status = RefundStatus::Completed;
                    let amount = f.amount;
                    self.amount_refunded += amount;
                }
                self.settle_refunds();
            }
            OrderEvent::RefundFailed { refund_id, reason } => {
                if let Some(f) = self.refund_mut(refund_id) {
                    f.status = RefundStatus::Failed;
                    f.failure_reason = Some(reason.clone());
                }
                self.settle_refunds();
            }
        }
        self.updated_at = r.recorded_at;
        self.version = r.seq;
        Ok(())
    }
}

impl Order {
    fn refund_mut(&mut self, refund_id: &str) -> Option<&mut OrderRefund> {
        self.refunds.iter_mut().find(|f| f.id == refund_id)
    }

    /// The refund `refund_id`.
    pub fn refund(&self, refund_id: &str) -> Option<&OrderRefund> {
        self.refunds.iter().find(|f| f.id == refund_id)
    }

    /// The oldest refund still being carried out.
    pub fn pending_refund(&self) -> Option<&OrderRefund> {
        self.refunds
            .iter()
            .find(|f| f.status == RefundStatus::Pending)
    }

    /// What is left to refund of each line (bought, less what refunds that did not fail
    /// took), in line order; lines with nothing left are left out.
    pub fn refundable(&self) -> Vec<RefundLine> {
        self.items
            .iter()
            .filter_map(|line| {
                let taken: i64 = self
                    .refunds
                    .iter()
                    .filter(|f| f.status != RefundStatus::Failed)
                    .flat_map(|f| &f.items)
                    .filter(|i| i.sku == line.sku)
                    .map(|i| i.qty)
                    .sum();
                let left = line.qty - taken;
                (left > 0).then(|| RefundLine {
                    sku: line.sku.clone(),
                    qty: left,
                })
            })
            .collect()
    }

    /// The price of `items` at the order's unit prices; `None` for a SKU not in the order
    /// or an overflow.
    pub fn price_of(&self, items: &[RefundLine]) -> Option<i64> {
        items.iter().try_fold(0i64, |sum, i| {
            let line = self.items.iter().find(|l| l.sku == i.sku)?;
            sum.checked_add(i.qty.checked_mul(line.unit_price)?)
        })
    }

    /// After a refund ended: `refunding` while another is pending, else `refunded` when
    /// nothing is left to refund, else `confirmed` again.
    fn settle_refunds(&mut self) {
        self.status = if self.pending_refund().is_some() {
            Status::Refunding
        } else if self.refundable().is_empty() {
            Status::Refunded
        } else {
            Status::Confirmed
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed() -> OrderEvent {
        OrderEvent::OrderPlaced {
            customer_id: "c1".into(),
            items: vec![Line {
                sku: "A".into(),
                qty: 2,
                unit_price: 500,
            }],
            currency: "EUR".into(),
            total: 1000,
            payment_method_id: "pm".into(),
            placed_at: 1,
        }
    }

    fn recorded(events: Vec<OrderEvent>) -> Vec<Recorded> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| Recorded {
                seq: i as i64 + 1,
                recorded_at: 100 + i as i64,
                event,
            })
            .collect()
    }

    #[test]
    fn the_happy_path_folds_to_confirmed() {
        let events = recorded(vec![
            placed(),
            OrderEvent::InventoryReserved { expires_at: 9 },
            OrderEvent::PaymentIntentCreated {
                payment_intent_id: "pi".into(),
            },
            OrderEvent::PaymentAuthorized {
                payment_intent_id: "pi".into(),
            },
            OrderEvent::ConfirmationStarted,
            OrderEvent::PaymentCaptured { amount: 1000 },
            OrderEvent::InventoryCommitted,
            OrderEvent::OrderConfirmed,
        ]);
        let o = Order::replay("o1", &events).unwrap().unwrap();
        assert_eq!(o.status, Status::Confirmed);
        assert_eq!(o.payment, PaymentState::Captured);
        assert_eq!(o.inventory, InventoryState::Committed);
        assert_eq!(o.version, 8);
        assert_eq!(o.updated_at, 107);
    }

    #[test]
    fn facts_after_compensation_started_do_not_move_the_status_forward() {
        let events = recorded(vec![
            placed(),
            OrderEvent::InventoryReserved { expires_at: 9 },
            OrderEvent::CompensationStarted {
                reason: "cancelled_by_customer".into(),
            },
            OrderEvent::PaymentAuthorized {
                payment_intent_id: "pi".into(),
            },
        ]);
        let o = Order::replay("o1", &events).unwrap().unwrap();
        assert_eq!(o.status, Status::Cancelling);
        assert_eq!(o.payment, PaymentState::Authorized);
        assert_eq!(o.cancel_reason.as_deref(), Some("cancelled_by_customer"));
    }

    #[test]
    fn a_history_must_start_with_exactly_one_placement() {
        let bad = recorded(vec![OrderEvent::InventoryReleased]);
        assert!(Order::replay("o1", &bad).is_err());
        let twice = recorded(vec![placed(), placed()]);
        assert!(Order::replay("o1", &twice).is_err());
        assert_eq!(Order::replay("o1", &[]).unwrap(), None);
    }

    #[test]
    fn events_round_trip_through_json_with_their_type_name() {
        let e = OrderEvent::CompensationStarted {
            reason: "out_of_stock".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "CompensationStarted");
        assert_eq!(serde_json::from_value::<OrderEvent>(v).unwrap(), e);
    }
}
