//! Graceful shutdown that loses no request.
//!
//! Pingora's own graceful terminate closes the listeners, sleeps a fixed grace period and then
//! shuts the runtimes down, which drops every request still in flight; with a grace period of
//! zero that is every request on a kept-alive connection. Here a terminate goes:
//!
//! 1. **Draining** (`server.grace_period`, default 0): still accepting, but `/ready` answers 503
//!    so a load balancer or Kubernetes stops sending, and every response closes its connection
//!    so clients move elsewhere.
//! 2. **Closing**: Pingora closes the listeners and idle connections; requests in flight go
//!    on, each closing its connection when answered.
//! 3. **Drained**: once no request is in flight (or `server.shutdown_timeout` has passed), the
//!    gateway counts as stopped: [`crate::Gateway::run`] returns and
//!    [`crate::GatewayHandle::shutdown`] comes back, without waiting out Pingora's fixed
//!    period (which is set to the timeout, as the upper bound).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::BackgroundService;

use crate::observe::Metrics;

/// Where a gateway is in its shutdown.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    drained: AtomicBool,
}

impl Drain {
    /// A terminate has begun: stop looking ready, close connections after each answer.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// No request is left in flight after the listeners closed (or the timeout passed).
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Acquire)
    }

    fn start(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// Where shutdown requests come from.
pub(crate) enum Source {
    /// SIGTERM (graceful), SIGINT (fast), SIGQUIT (graceful: upgrades are not supported).
    Signals,
    /// A [`crate::GatewayHandle`].
    Handle(tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<ShutdownSignal>>>),
}

impl Source {
    async fn next(&self) -> ShutdownSignal {
        match self {
            Source::Signals => {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::quit()),
                ) else {
                    tracing::error!("cannot listen for signals; stop the gateway with SIGKILL");
                    return std::future::pending().await;
                };
                tokio::select! {
                    _ = term.recv() => ShutdownSignal::GracefulTerminate,
                    _ = quit.recv() => ShutdownSignal::GracefulTerminate,
                    _ = int.recv() => ShutdownSignal::FastShutdown,
                }
            }
            Source::Handle(rx) => {
                let rx = rx.lock().await.take();
                match rx {
                    Some(rx) => rx.await.unwrap_or(ShutdownSignal::FastShutdown),
                    None => std::future::pending().await,
                }
            }
        }
    }
}

/// The watch Pingora's server waits on: a graceful terminate drains for `grace` before Pingora
/// is told (a second signal, or a fast one, cuts that short).
pub(crate) struct Watch {
    pub source: Source,
    pub drain: Arc<Drain>,
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Watch {
    async fn recv(&self) -> ShutdownSignal {
        let signal = self.source.next().await;
        if !matches!(signal, ShutdownSignal::GracefulTerminate) {
            return signal;
        }
        self.drain.start();
        tracing::info!(grace = ?self.grace, "terminating: /ready answers 503 and connections close after each answer");
        if !self.grace.is_zero() {
            // A handle's second wait never ends (its one signal is spent), so only signals
            // can cut the grace short.
            tokio::select! {
                _ = tokio::time::sleep(self.grace) => {}
                next = self.source.next() => return next,
            }
        }
        signal
    }
}

/// Background service: once Pingora has closed the listeners, waits for the requests in
/// flight to finish (at most `timeout`) and marks the gateway drained.
pub(crate) struct DrainService {
    pub drain: Arc<Drain>,
    pub metrics: Arc<Metrics>,
    pub timeout: Duration,
}

#[async_trait]
impl BackgroundService for DrainService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tick.tick().await;
            let left = self.metrics.in_flight.get();
            if left <= 0 {
                tracing::info!("drained: no request in flight");
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    in_flight = left,
                    "server.shutdown_timeout passed with requests in flight; they are cut"
                );
                break;
            }
        }
        self.drain.drained.store(true, Ordering::Release);
    }
}
