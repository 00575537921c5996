//! The analytics service's errors: the kit's common ones, answered as problem+json.

pub use kit::problem::{FieldError, ServiceError as Error};
