//! The order service's errors and how each is answered (problem+json).

use axum::response::{IntoResponse, Response};
use kit::{DbError, Problem};
use serde::Serialize;

use crate::store::StoreError;

/// One invalid input field.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path in the request body (`items[0].qty`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

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

impl From<Problem> for Error {
    fn from(p: Problem) -> Error {
        Error::Problem(p)
    }
}

impl From<DbError> for Error {
    fn from(e: DbError) -> Error {
        Error::Store(StoreError::Db(e))
    }
}

impl Error {
    /// One invalid field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Invalid(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    fn problem(self) -> Problem {
        match self {
            Error::Invalid(errors) => {
                let detail = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                Problem::unprocessable(detail).with("errors", errors)
            }
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

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.problem().into_response()
    }
}
