//! The order service's errors and how each is answered (problem+json).

pub use kit::problem::FieldError;
use kit::{DbError, Problem};

use crate::store::StoreError;

/// Everything an order-service handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that breaks a rule: 422 with each field's problem.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// No such order (or not the caller's): 404.
    #[error("no such order")]
    NotFound,
    /// The order's state does not allow it: 409.
    #[error("{0}")]
    Conflict(String),
    /// Another service needed to answer could not: 503.
    #[error("{0}")]
    Unavailable(String),
    /// An answer already shaped as a problem (extractor rejections, guards).
    #[error("{0}")]
    Problem(Problem),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

kit::problem_glue!(Error);

impl From<DbError> for Error {
    fn from(e: DbError) -> Error {
        Error::Store(StoreError::Db(e))
    }
}

impl Error {
    fn problem(self) -> Problem {
        match self {
            Error::Invalid(errors) => Problem::invalid(errors),
            Error::NotFound => Problem::not_found("no such order"),
            Error::Conflict(why) => Problem::conflict(why),
            Error::Unavailable(why) => Problem::unavailable(why),
            Error::Problem(p) => p,
            Error::Store(StoreError::Conflict(_)) => {
                Problem::conflict("the order is changing; try again")
            }
            e @ Error::Store(_) => Problem::internal(&e),
        }
    }
}
