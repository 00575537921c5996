//! The placement saga: a runner per order that reads the order's state, takes the one step
//! that state calls for, records what happened as an event, and reads again, until the
//! order is confirmed or cancelled. Because the next step is always derived from the
//! stored events, a runner that stops anywhere (crash, shutdown, lost lease) is resumed by
//! the next one from where the events say it is.
//!
//! Forward path: reserve stock → create the payment intent → authorize it → *pivot*
//! (`ConfirmationStarted`) → capture → commit the reservation → `OrderConfirmed`.
//!
//! Before the pivot each step has a deadline: transient failures are retried (growing
//! pauses) until it passes, and a definitive refusal (out of stock, declined) or the
//! deadline starts compensation at once. The customer may cancel only before the pivot.
//! After the pivot the steps are retried until they succeed, and only a definitive refusal
//! (the reservation expired, the capture refused) compensates. Capture comes before commit
//! because a capture can be undone (refund) and a commit, in the contract, cannot.
//!
//! Compensation runs in reverse: settle the payment (void an authorization, refund a
//! capture, judged by asking the payment service what the intents of the order really are,
//! so a command whose answer was lost is undone too), then release the reservation
//! (idempotent, also when none was ever made), then `OrderCancelled`. Compensation steps
//! have no deadline: they are retried until they succeed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kit::db::new_id;
use kit::problem::error_chain;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clients::{Inventory, Item, NewIntent, Payments, StepError};
use crate::lease;
use crate::order::{
    reasons, InventoryState, Order, OrderEvent, PaymentState, RefundStatus, Status,
};
use crate::store::{EventStore, StoreError};

/// Deadlines, pauses and leases of the saga.
#[derive(Debug, Clone)]
pub struct SagaSettings {
    /// How long a step before the pivot may keep failing transiently before the order is
    /// compensated.
    pub step_deadline: Duration,
    /// The longest pause between two tries of a step.
    pub max_backoff: Duration,
    /// How long a runner's claim on an order lasts without renewal (renewed every third).
    pub lease: Duration,
    /// How often unfinished orders without a runner are looked for.
    pub resume_interval: Duration,
    /// Fault injection for tests: where a runner stops as if its process died. No setting
    /// reads it, so a deployed service never has one.
    pub crash: Option<CrashPoint>,
}

/// A runner stops, as a crash would (its lease left to expire), instead of recording the
/// event named `before`: the call whose outcome that event records was made, and its
/// record is lost. The restarted service must then repeat the step without acting twice.
#[derive(Debug, Clone)]
pub struct CrashPoint {
    /// The name of the event not recorded ([`OrderEvent::name`]).
    pub before: &'static str,
    /// Turned on when a runner stopped there.
    pub hit: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for SagaSettings {
    fn default() -> SagaSettings {
        SagaSettings {
            step_deadline: Duration::from_secs(30),
            max_backoff: Duration::from_secs(5),
            lease: Duration::from_secs(30),
            resume_interval: Duration::from_secs(10),
            crash: None,
        }
    }
}

/// Why a runner stopped before the order was finished.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// Storage failed; the order is resumed later.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The runner stopped at its [`CrashPoint`].
    #[error("stopped before recording {0}, as a crash would")]
    Crashed(&'static str),
}

/// How a forward step ended, when not with its fact.
enum Failed {
    /// Refused for good, with the cancel reason.
    Rejected(String),
    /// Still failing when the deadline passed.
    Deadline,
}

/// Starts and resumes saga runners. Cheap to clone.
#[derive(Clone)]
pub struct Saga(Arc<Inner>);

struct Inner {
    store: EventStore,
    inventory: Arc<dyn Inventory>,
    payments: Arc<dyn Payments>,
    settings: SagaSettings,
    stop: watch::Receiver<bool>,
    /// Where a resumed runner's spans go (a runner started by a request uses the request's).
    tracer: kit::trace::Tracer,
}

impl Saga {
    /// Runners over `store` calling `inventory` and `payments`; they stop when `stop` turns
    /// true (or its sender is dropped), wherever they are, as a crash would.
    pub fn new(
        store: EventStore,
        inventory: Arc<dyn Inventory>,
        payments: Arc<dyn Payments>,
        settings: SagaSettings,
        stop: watch::Receiver<bool>,
    ) -> Saga {
        Saga(Arc::new(Inner {
            store,
            inventory,
            payments,
            settings,
            stop,
            tracer: kit::trace::Tracer::for_service("order"),
        }))
    }

    /// Drives `order_id` in the background unless a runner already does. Started while a
    /// request is handled, its calls and events continue that request's trace, although
    /// the request has been answered by then; a saga resumed later starts traces of its own.
    pub fn start(&self, order_id: String) {
        if self.stopped() {
            return;
        }
        let saga = self.clone();
        kit::trace::spawn(async move { saga.run(order_id).await });
    }

    /// Starts a runner for every unfinished order nobody drives; how many were found.
    pub async fn resume_unfinished(&self) -> Result<usize, StoreError> {
        let ids = lease::orphans(self.0.store.db(), 500).await?;
        let n = ids.len();
        for id in ids {
            self.start(id);
        }
        Ok(n)
    }

    /// Looks for orphaned orders now and every `resume_interval` until stopped.
    pub fn spawn_resumer(&self) -> tokio::task::JoinHandle<()> {
        let saga = self.clone();
        tokio::spawn(async move {
            let mut stop = saga.0.stop.clone();
            let mut ticks = tokio::time::interval(saga.0.settings.resume_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = ticks.tick() => {}
                }
                if saga.stopped() {
                    return;
                }
                match saga.resume_unfinished().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(orders = n, "resuming unfinished order sagas"),
                    Err(e) => {
                        tracing::warn!(error = %error_chain(&e), "looking for unfinished sagas failed")
                    }
                }
            }
        })
    }

    fn stopped(&self) -> bool {
        *self.0.stop.borrow() || self.0.stop.has_changed().is_err()
    }

    async fn run(self, order_id: String) {
        let db = self.0.store.db().clone();
        let owner = new_id();
        match lease::claim(&db, &order_id, &owner, self.0.settings.lease).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(order_id, error = %error_chain(&e), "claiming an order's saga failed");
                return;
            }
        }
        let trace = self.trace(&order_id).await;
        let drive = async {
            match trace {
                Some(current) => current.scope(self.drive(&order_id)).await,
                None => self.drive(&order_id).await,
            }
        };
        let mut stop = self.0.stop.clone();
        let done = tokio::select! {
            // Stopping leaves the lease to expire, exactly as a crash would.
            _ = stop.changed() => return,
            _ = self.heartbeat(&order_id, &owner) => return,
            done = drive => done,
        };
        if let Err(e) = done {
            if matches!(e, SagaError::Crashed(_)) {
                return; // as a crash would: the lease stays until it expires
            }
            tracing::error!(order_id, error = %error_chain(&e), "order saga stopped; it resumes later");
        }
        if let Err(e) = lease::release(&db, &order_id, &owner).await {
            tracing::warn!(order_id, error = %error_chain(&e), "releasing an order's saga lease failed");
        }
    }

    /// The trace the runner's calls and events continue: that of the request that started
    /// it, which the order keeps, so that a runner resumed after a restart (or on another
    /// replica) continues it too. `None` for an order placed outside any trace.
    async fn trace(&self, order_id: &str) -> Option<kit::trace::Current> {
        let db = self.0.store.db();
        if let Some(current) = kit::trace::current() {
            let kept = sqlx::query("UPDATE orders SET traceparent = $2 WHERE id = $1")
                .bind(order_id)
                .bind(current.trace.header())
                .execute(db.pool())
                .await;
            if let Err(e) = kept {
                tracing::warn!(order_id, error = %e, "keeping the order's trace context failed");
            }
            return Some(current);
        }
        let kept: Option<String> =
            sqlx::query_scalar("SELECT traceparent FROM orders WHERE id = $1")
                .bind(order_id)
                .fetch_optional(db.pool())
                .await
                .ok()
                .flatten()
                .flatten();
        Some(kit::trace::Current {
            trace: kit::TraceContext::resume(&kept?)?,
            tracer: self.0.tracer.clone(),
        })
    }

    /// Renews the lease every third of it; returns when it is lost.
    async fn heartbeat(&self, order_id: &str, owner: &str) {
        let lease = self.0.settings.lease;
        loop {
            tokio::time::sleep(lease / 3).await;
            match lease::renew(self.0.store.db(), order_id, owner, lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(order_id, "another runner took over this order's saga");
                    return;
                }
                Err(e) => {
                    tracing::warn!(order_id, error = %error_chain(&e), "renewing a saga lease failed")
                }
            }
        }
    }

    /// Steps the order until it is finished.
    async fn drive(&self, order_id: &str) -> Result<(), SagaError> {
        loop {
            let Some(order) = self.0.store.load(order_id).await? else {
                return Ok(());
            };
            match order.status {
                Status::Confirmed | Status::Cancelled | Status::Refunded => return Ok(()),
                Status::Cancelling => self.compensate(&order).await?,
                Status::Refunding => {
                    if !self.refund(&order).await? {
                        return Ok(());
                    }
                }
                _ => self.forward(&order).await?,
            }
        }
    }

    /// Takes the forward step `order`'s state calls for and records its outcome.
    async fn forward(&self, order: &Order) -> Result<(), SagaError> {
        let (inventory, payments) = (&self.0.inventory, &self.0.payments);
        let id = order.id.as_str();
        let pivoted = order.status == Status::Confirming;
        let outcome = match (order.status, &order.payment_intent_id) {
            (Status::Pending, _) => {
                let items = to_items(order.items.iter().map(|l| (&l.sku, l.qty)));
                self.step("reserve", false, || inventory.reserve(id, &items))
                    .await
                    .map(|expires_at| OrderEvent::InventoryReserved { expires_at })
            }
            (Status::Reserved, None) => {
                let new = NewIntent {
                    order_id: order.id.clone(),
                    customer_id: order.customer_id.clone(),
                    payment_method_id: order.payment_method_id.clone(),
                    amount: order.total,
                    currency: order.currency.clone(),
                };
                self.step("create_payment", false, || payments.create(&new))
                    .await
                    .map(|i| OrderEvent::PaymentIntentCreated {
                        payment_intent_id: i.id,
                    })
            }
            (Status::Reserved, Some(intent)) => self
                .step("authorize", false, || async {
                    let i = payments.confirm(id, intent).await?;
                    if i.status == "requires_capture" {
                        return Ok(i);
                    }
                    let why = i.failure_reason.unwrap_or(i.status);
                    Err(StepError::Rejected {
                        reason: format!("{}:{why}", reasons::PAYMENT_FAILED),
                        detail: format!("payment intent {} was not authorized", i.id),
                    })
                })
                .await
                .map(|i| OrderEvent::PaymentAuthorized {
                    payment_intent_id: i.id,
                }),
            (Status::Authorized, _) => {
                return self
                    .decide(
                        id,
                        |o| o.status == Status::Authorized,
                        vec![OrderEvent::ConfirmationStarted],
                    )
                    .await;
            }
            (Status::Confirming, Some(intent)) if order.payment != PaymentState::Captured => self
                .step("capture", true, || async {
                    let i = payments.capture(id, intent, order.total).await?;
                    if i.status == "succeeded" {
                        return Ok(i);
                    }
                    Err(StepError::Rejected {
                        reason: format!("{}:capture", reasons::REJECTED),
                        detail: format!("payment intent {} is {} after capture", i.id, i.status),
                    })
                })
                .await
                .map(|i| OrderEvent::PaymentCaptured {
                    amount: i.amount_captured,
                }),
            (Status::Confirming, _) if order.inventory != InventoryState::Committed => self
                .step("commit", true, || inventory.commit(id))
                .await
                .map(|()| OrderEvent::InventoryCommitted),
            (Status::Confirming, _) => {
                let ready = |o: &Order| {
                    o.status == Status::Confirming
                        && o.payment == PaymentState::Captured
                        && o.inventory == InventoryState::Committed
                };
                return self
                    .decide(id, ready, vec![OrderEvent::OrderConfirmed])
                    .await;
            }
            (
                Status::Confirmed
                | Status::Cancelling
                | Status::Cancelled
                | Status::Refunding
                | Status::Refunded,
                _,
            ) => return Ok(()),
        };
        match outcome {
            Ok(fact) => self.record(id, fact).await,
            Err(failed) => {
                let (kind, reason) = match failed {
                    Failed::Rejected(reason) => ("rejected", reason),
                    Failed::Deadline => (
                        "deadline",
                        format!("{}:{}", reasons::DEADLINE, step_name(order, pivoted)),
                    ),
                };
                crate::metrics::COMPENSATIONS
                    .with_label_values(&[kind])
                    .inc();
                tracing::info!(order_id = id, reason, "order saga compensating");
                let open = |o: &Order| {
                    !matches!(
                        o.status,
                        Status::Confirmed | Status::Cancelling | Status::Cancelled
                    )
                };
                self.decide(id, open, vec![OrderEvent::CompensationStarted { reason }])
                    .await
            }
        }
    }

    /// Undoes what was done, in reverse, and cancels the order.
    async fn compensate(&self, order: &Order) -> Result<(), SagaError> {
        let id = order.id.as_str();
        // Payment is only attempted after the reservation was recorded: an order that never
        // reserved has no money to settle (and needs no answer from the payment service).
        let paid = order.inventory != InventoryState::None;
        if paid && !matches!(order.payment, PaymentState::Voided | PaymentState::Refunded) {
            let settled = self
                .until_done("settle_payment", || self.settle_payment(order))
                .await;
            if let Some(fact) = settled {
                self.record(id, fact).await?;
            }
        }
        if order.inventory != InventoryState::Released {
            self.until_done("release", || self.0.inventory.release(id))
                .await;
            self.record(id, OrderEvent::InventoryReleased).await?;
        }
        let reason = order
            .cancel_reason
            .clone()
            .unwrap_or_else(|| reasons::REJECTED.to_owned());
        self.decide(
            id,
            |o| o.status == Status::Cancelling,
            vec![OrderEvent::OrderCancelled { reason }],
        )
        .await
    }

    /// Leaves no money held or taken for the order: voids every intent that is not
    /// canceled or captured, refunds what was captured. The fact to record, if any.
    async fn settle_payment(&self, order: &Order) -> Result<Option<OrderEvent>, StepError> {
        let payments = &self.0.payments;
        let mut intents = payments.for_order(&order.id).await?;
        if let Some(known) = &order.payment_intent_id {
            if !intents.iter().any(|i| &i.id == known) {
                return Err(StepError::Transient(format!(
                    "payment intent {known} of order {} is not listed yet",
                    order.id
                )));
            }
        }
        intents.sort_by(|a, b| a.id.cmp(&b.id));
        let mut fact = None;
        for i in intents {
            match i.status.as_str() {
                "canceled" => {
                    fact.get_or_insert(OrderEvent::PaymentVoided);
                }
                "succeeded" => {
                    let left = i.amount_captured - i.amount_refunded;
                    if left > 0 {
                        payments.refund(&order.id, &i.id, "refund", left).await?;
                    }
                    fact = Some(OrderEvent::PaymentRefunded {
                        amount: i.amount_captured,
                    });
                }
                // Not voided while the processor decides: the payment service refuses with a
                // 409 it keeps under the void's Idempotency-Key, so every later void would
                // replay that refusal, even once a late approval holds money. Wait instead:
                // the authorization ends (approved, declined or timed out) within the
                // payment service's processor deadline.
                // Likewise while a capture's answer is awaited: the payment service settles
                // it (captured, then refunded here; or back to authorized, then voided).
                "processing" | "capturing" => {
                    return Err(StepError::Transient(format!(
                        "payment intent {} is still {}",
                        i.id, i.status
                    )));
                }
                _ => {
                    let after = payments.void(&order.id, &i.id).await?;
                    if after.status != "canceled" {
                        return Err(StepError::Transient(format!(
                            "payment intent {} is {} after void",
                            i.id, after.status
                        )));
                    }
                    fact.get_or_insert(OrderEvent::PaymentVoided);
                }
            }
        }
        Ok(fact)
    }

    /// Takes the next step of the oldest pending refund of a confirmed order: pay it back
    /// (a refusal for good fails the refund, nothing returned), then return its stock,
    /// then complete it. Both calls carry the refund's id, so a step repeated after a crash
    /// acts once. Whether there was a step to take.
    async fn refund(&self, order: &Order) -> Result<bool, SagaError> {
        let id = order.id.as_str();
        let Some(refund) = order.pending_refund() else {
            return Ok(false);
        };
        let refund_id = refund.id.clone();
        let fact = if !refund.paid {
            let Some(intent) = order.payment_intent_id.as_deref() else {
                return Ok(false);
            };
            let key = format!("refund:{refund_id}");
            let paid = self
                .until_decided("refund_payment", || {
                    self.0.payments.refund(id, intent, &key, refund.amount)
                })
                .await;
            match paid {
                Ok(()) => OrderEvent::RefundPaid { refund_id },
                Err(reason) => OrderEvent::RefundFailed { refund_id, reason },
            }
        } else if !refund.stock_returned {
            let items = to_items(refund.items.iter().map(|l| (&l.sku, l.qty)));
            self.until_done("return_stock", || {
                self.0
                    .inventory
                    .return_stock(id, &refund_id, &items, &refund.reason)
            })
            .await;
            OrderEvent::StockReturned { refund_id }
        } else {
            OrderEvent::RefundCompleted { refund_id }
        };
        self.record(id, fact).await?;
        Ok(true)
    }

    /// Appends `fact` unless the order already knows it (or knows better).
    async fn record(&self, order_id: &str, fact: OrderEvent) -> Result<(), SagaError> {
        self.0
            .store
            .decide(order_id, |o| {
                let events = if advances(o, &fact) {
                    vec![fact.clone()]
                } else {
                    vec![]
                };
                self.crash_before(&events)?;
                Ok::<_, SagaError>(events)
            })
            .await?;
        Ok(())
    }

    /// Appends `events` if the order, as stored now, passes `when`.
    async fn decide(
        &self,
        order_id: &str,
        when: impl Fn(&Order) -> bool,
        events: Vec<OrderEvent>,
    ) -> Result<(), SagaError> {
        self.0
            .store
            .decide(order_id, |o| {
                let events = if when(o) { events.clone() } else { vec![] };
                self.crash_before(&events)?;
                Ok::<_, SagaError>(events)
            })
            .await?;
        Ok(())
    }

    /// The runner's [`CrashPoint`], if `events` are what it stops before.
    fn crash_before(&self, events: &[OrderEvent]) -> Result<(), SagaError> {
        match &self.0.settings.crash {
            Some(c) if events.iter().any(|e| e.name() == c.before) => {
                c.hit.store(true, std::sync::atomic::Ordering::SeqCst);
                Err(SagaError::Crashed(c.before))
            }
            _ => Ok(()),
        }
    }

    /// Tries a forward step until it succeeds, is refused, or (before the pivot) its
    /// deadline passes.
    async fn step<T, F, Fut>(&self, name: &str, pivoted: bool, mut call: F) -> Result<T, Failed>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let deadline = (!pivoted).then(|| Instant::now() + self.0.settings.step_deadline);
        let mut pause = Duration::from_millis(50);
        loop {
            let attempt = match deadline {
                Some(d) => match tokio::time::timeout_at(d, call()).await {
                    Ok(r) => r,
                    Err(_) => return Err(Failed::Deadline),
                },
                None => call().await,
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err(StepError::Rejected { reason, detail }) => {
                    tracing::info!(step = name, reason, detail, "saga step refused");
                    return Err(Failed::Rejected(reason));
                }
                Err(StepError::Transient(why)) => {
                    tracing::debug!(step = name, why, "saga step failed; retrying");
                }
            }
            if deadline.is_some_and(|d| Instant::now() + pause >= d) {
                return Err(Failed::Deadline);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.0.settings.max_backoff);
        }
    }

    /// Tries a step until it succeeds or is refused for good (its reason); transient
    /// failures are retried without a deadline.
    async fn until_decided<F, Fut>(&self, name: &str, mut call: F) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), StepError>>,
    {
        let mut pause = Duration::from_millis(50);
        loop {
            match call().await {
                Ok(()) => return Ok(()),
                Err(StepError::Rejected { reason, detail }) => {
                    tracing::warn!(step = name, reason, detail, "saga step refused");
                    return Err(reason);
                }
                Err(StepError::Transient(why)) => {
                    tracing::debug!(step = name, why, "saga step failed; retrying");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.0.settings.max_backoff);
        }
    }

    /// Tries a compensation step until it succeeds (a refusal is retried too: compensation
    /// has no way back, and a refusal here means something is still moving).
    async fn until_done<T, F, Fut>(&self, name: &str, mut call: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let mut pause = Duration::from_millis(50);
        let mut failures = 0u32;
        loop {
            match call().await {
                Ok(v) => return v,
                Err(e) => {
                    failures += 1;
                    if failures.is_multiple_of(10) {
                        tracing::warn!(step = name, failures, error = %e, "compensation step keeps failing; retrying");
                    } else {
                        tracing::debug!(step = name, error = %e, "compensation step failed; retrying");
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.0.settings.max_backoff);
        }
    }
}

/// Lines as the product service takes them.
fn to_items<'a>(lines: impl Iterator<Item = (&'a String, i64)>) -> Vec<Item> {
    lines
        .map(|(sku, qty)| Item {
            sku: sku.clone(),
            qty,
        })
        .collect()
}

/// The name of the forward step `order`'s state calls for (for deadline reasons).
fn step_name(order: &Order, pivoted: bool) -> &'static str {
    match (order.status, &order.payment_intent_id) {
        (Status::Pending, _) => "reserve",
        (Status::Reserved, None) => "create_payment",
        (Status::Reserved, Some(_)) => "authorize",
        _ if pivoted && order.payment != PaymentState::Captured => "capture",
        _ if pivoted => "commit",
        _ => "confirm",
    }
}

/// Whether recording `fact` tells the order something new: facts only move what is known
/// of the other services forward (a late "authorized" never undoes a "voided").
fn advances(o: &Order, fact: &OrderEvent) -> bool {
    let payment_rank = |p: PaymentState| match p {
        PaymentState::None => 0,
        PaymentState::Created => 1,
        PaymentState::Authorized => 2,
        PaymentState::Captured => 3,
        PaymentState::Voided | PaymentState::Refunded => 4,
    };
    let inventory_rank = |i: InventoryState| match i {
        InventoryState::None => 0,
        InventoryState::Reserved => 1,
        InventoryState::Committed | InventoryState::Released => 2,
    };
    match fact {
        OrderEvent::InventoryReserved { .. } => inventory_rank(o.inventory) < 1,
        OrderEvent::InventoryCommitted | OrderEvent::InventoryReleased => {
            inventory_rank(o.inventory) < 2
        }
        OrderEvent::PaymentIntentCreated { .. } => o.payment_intent_id.is_none(),
        OrderEvent::PaymentAuthorized { .. } => payment_rank(o.payment) < 2,
        OrderEvent::PaymentCaptured { .. } => payment_rank(o.payment) < 3,
        OrderEvent::PaymentVoided | OrderEvent::PaymentRefunded { .. } => {
            payment_rank(o.payment) < 4
        }
        OrderEvent::RefundPaid { refund_id } | OrderEvent::RefundFailed { refund_id, .. } => o
            .refund(refund_id)
            .is_some_and(|f| f.status == RefundStatus::Pending && !f.paid),
        OrderEvent::StockReturned { refund_id } => o
            .refund(refund_id)
            .is_some_and(|f| f.status == RefundStatus::Pending && f.paid && !f.stock_returned),
        OrderEvent::RefundCompleted { refund_id } => o
            .refund(refund_id)
            .is_some_and(|f| f.status == RefundStatus::Pending && f.paid && f.stock_returned),
        _ => !o.status.is_terminal(),
    }
}
