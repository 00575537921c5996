//! The product service's errors and how each is answered (problem+json).

use axum::http::StatusCode;
pub use kit::problem::FieldError;
use kit::{DbError, Problem};

/// The problem type of a reservation refused for want of stock.
pub const OUT_OF_STOCK: &str = "https://gatehouse.dev/problems/out-of-stock";

/// Everything a product-service handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that breaks a rule: 422 with each field's problem.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// The sku belongs to another product already: 409.
    #[error("sku already exists")]
    SkuTaken,
    /// Not enough available stock of `sku` for a reservation: 409 with the out-of-stock type.
    #[error("not enough stock of {sku}")]
    OutOfStock {
        /// The first item that could not be reserved.
        sku: String,
    },
    /// A state transition that the current state does not allow (commit of a released
    /// reservation, an adjustment below the reserved count…): 409.
    #[error("{0}")]
    Conflict(String),
    /// No such thing: 404.
    #[error("{0}")]
    NotFound(&'static str),
    /// An answer already shaped as a problem (auth and extractor rejections).
    #[error("{0}")]
    Problem(Problem),
    /// Stored state broke an invariant this service keeps (a bug): 500, and the
    /// transaction is rolled back.
    #[error("invariant broken: {0}")]
    Invariant(String),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The event bus refused a subscription (at start).
    #[error(transparent)]
    Bus(#[from] kit::BusError),
    /// The read cache failed where its failure cannot be ignored (invalidation).
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

kit::problem_glue!(Error, db: Db);

impl Error {
    fn problem(self) -> Problem {
        match self {
            Error::Invalid(errors) => Problem::invalid(errors),
            Error::SkuTaken => Problem::conflict("a product with this sku already exists"),
            Error::OutOfStock { sku } => Problem::new(StatusCode::CONFLICT)
                .kind(OUT_OF_STOCK)
                .title("Out of stock")
                .detail(format!("not enough available stock of {sku}"))
                .with("sku", sku),
            Error::Conflict(why) => Problem::conflict(why),
            Error::NotFound(what) => Problem::not_found(what),
            Error::Problem(p) => p,
            Error::Db(e @ (DbError::Conflict | DbError::NotFound)) => e.into(),
            e @ (Error::Db(_) | Error::Cache(_) | Error::Bus(_) | Error::Invariant(_)) => {
                Problem::internal(&e)
            }
        }
    }
}

/// Collects field errors while validating a request.
#[derive(Debug, Default)]
pub struct Fields(pub Vec<FieldError>);

impl Fields {
    /// Notes that `field` is invalid.
    pub fn push(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// `Ok` when nothing was noted, else 422 with everything noted.
    pub fn finish(self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(self.0))
        }
    }
}
