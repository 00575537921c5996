//! The user service's errors and how each is answered (problem+json).

use axum::http::{header, HeaderValue, StatusCode};
pub use kit::problem::FieldError;
use kit::{DbError, Problem};

use crate::keys::KeyError;
use crate::password::PasswordError;

/// Everything a user-service handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that breaks a rule: 422 with each field's problem.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// The email is registered already: 409.
    #[error("email already registered")]
    EmailTaken,
    /// Wrong email or password (the same answer for both): 401.
    #[error("invalid email or password")]
    BadCredentials,
    /// Too many failed logins for this email: 429 with Retry-After.
    #[error("too many failed logins")]
    Throttled {
        /// Seconds until the next attempt is considered.
        retry_after_s: u64,
    },
    /// The refresh token is unknown, expired, or its session has ended: 401.
    #[error("{0}")]
    BadRefreshToken(&'static str),
    /// The access token's session has ended: 401.
    #[error("the session has ended")]
    SessionEnded,
    /// The right password for an account an admin disabled: 403 (a wrong password gets
    /// [`Error::BadCredentials`] as for any account).
    #[error("the account is disabled")]
    Disabled,
    /// Not allowed: 403.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing: 404.
    #[error("{0}")]
    NotFound(&'static str),
    /// An answer already shaped as a problem (extractor rejections).
    #[error("{0}")]
    Problem(Problem),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Hashing failed.
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// The key ring failed.
    #[error(transparent)]
    Keys(#[from] KeyError),
}

kit::problem_glue!(Error, db: Db);

impl Error {
    fn problem(self) -> Problem {
        match self {
            Error::Invalid(errors) => Problem::invalid(errors),
            Error::EmailTaken => Problem::conflict("an account with this email already exists"),
            Error::BadCredentials => {
                Problem::new(StatusCode::UNAUTHORIZED).detail("invalid email or password")
            }
            Error::Throttled { retry_after_s } => Problem::new(StatusCode::TOO_MANY_REQUESTS)
                .detail("too many failed logins; try again later")
                .header(header::RETRY_AFTER, HeaderValue::from(retry_after_s)),
            Error::BadRefreshToken(why) => {
                Problem::new(StatusCode::UNAUTHORIZED).detail(why.to_owned())
            }
            Error::SessionEnded => Problem::unauthorized("the session has ended; log in again"),
            Error::Disabled => Problem::forbidden("this account is disabled; contact the shop"),
            Error::Forbidden(why) => Problem::forbidden(why),
            Error::NotFound(what) => Problem::not_found(what),
            Error::Problem(p) => p,
            Error::Db(e @ (DbError::Conflict | DbError::NotFound)) => e.into(),
            // The operator's choice, not a failure: say so instead of a 500.
            Error::Keys(e @ KeyError::Inline) => Problem::conflict(e.to_string()),
            e @ (Error::Db(_) | Error::Password(_) | Error::Keys(_)) => Problem::internal(&e),
        }
    }
}
