//! The payment service's errors and how each is answered (problem+json).

pub use kit::problem::FieldError;
use kit::{DbError, Problem};

use crate::processor::ProcessorError;

/// Everything a payment-service handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that breaks a rule: 422 with each field's problem.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// Not allowed: 403.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing, or not the caller's to see: 404.
    #[error("{0}")]
    NotFound(&'static str),
    /// The intent is in a state that does not allow the operation: 409.
    #[error("{0}")]
    State(String),
    /// A refund larger than what is left to refund: 409 with `refundable`.
    #[error("the refund exceeds the refundable amount")]
    RefundExceeds {
        /// What is still refundable, minor units.
        refundable: i64,
    },
    /// An answer already shaped as a problem (extractor rejections).
    #[error("{0}")]
    Problem(Problem),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The processor failed on a capture, void or refund: 502 (nothing was changed).
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    /// The fingerprint key could not be read or created.
    #[error("fingerprint key: {0}")]
    Key(String),
}

kit::problem_glue!(Error, db: Db);

impl Error {
    fn problem(self) -> Problem {
        match self {
            Error::Invalid(errors) => Problem::invalid(errors),
            Error::Forbidden(why) => Problem::forbidden(why),
            Error::NotFound(what) => Problem::not_found(what),
            Error::State(why) => Problem::conflict(why),
            Error::RefundExceeds { refundable } => Problem::conflict(format!(
                "the refund exceeds what is left to refund ({refundable})"
            ))
            .kind("https://gatehouse.dev/problems/refund-exceeds-captured")
            .with("refundable", refundable),
            Error::Problem(p) => p,
            Error::Db(e @ (DbError::Conflict | DbError::NotFound)) => e.into(),
            Error::Processor(e) => {
                tracing::warn!(error = %e, "the payment processor failed");
                Problem::new(axum::http::StatusCode::BAD_GATEWAY)
                    .detail("the payment processor failed; nothing was changed, try again")
            }
            e @ (Error::Db(_) | Error::Key(_)) => Problem::internal(&e),
        }
    }
}
