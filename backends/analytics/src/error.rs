//! The analytics service's errors and how each is answered (problem+json).

pub use kit::problem::FieldError;
use kit::{DbError, Problem};

/// Everything an analytics-service handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that breaks a rule: 422 with each field's problem.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// No such thing (or not the caller's): 404.
    #[error("{0}")]
    NotFound(&'static str),
    /// An answer already shaped as a problem (auth and extractor rejections).
    #[error("{0}")]
    Problem(Problem),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

kit::problem_glue!(Error, db: Db);

impl Error {
    fn problem(self) -> Problem {
        match self {
            Error::Invalid(errors) => Problem::invalid(errors),
            Error::NotFound(what) => Problem::not_found(what),
            Error::Problem(p) => p,
            Error::Db(e) => e.into(),
        }
    }
}

/// A query string as `T`, or a 400 saying why not.
pub fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Error> {
    q.map(|axum::extract::Query(t)| t)
        .map_err(|e| Error::Problem(Problem::bad_request(e.body_text())))
}
