//! The analytics service's errors: the kit's common ones, answered as problem+json.

pub use kit::problem::{FieldError, ServiceError as Error};
use kit::Problem;

/// A query string as `T`, or a 400 saying why not.
pub fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Error> {
    q.map(|axum::extract::Query(t)| t)
        .map_err(|e| Error::Problem(Problem::bad_request(e.body_text())))
}
