//! `application/problem+json` answers (RFC 9457), and the JSON extractor whose rejections
//! come out as problems too.
//!
//! Each service keeps its own error enum and converts it into a [`Problem`]; the kit's own
//! errors ([`DbError`]) convert here. Internal failures are logged with their cause chain
//! and answered with a generic 500 that reveals nothing.

use std::borrow::Cow;
use std::fmt::Write as _;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::db::DbError;

/// One problem answer. Build with [`Problem::new`] or a shorthand, add `detail` and
/// extension members, return it from a handler.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The HTTP status, also written as the `status` member.
    pub status: StatusCode,
    /// A short, stable summary of the problem type (defaults to the status' reason).
    pub title: String,
    /// What went wrong with this request, for a human.
    pub detail: Option<String>,
    /// The rarely used parts, boxed so a `Result<_, Problem>` stays small.
    extra: Box<Extra>,
}

#[derive(Debug, Clone, Default)]
struct Extra {
    /// A URI naming the problem type; `about:blank` when absent.
    kind: Option<String>,
    /// Extension members (e.g. `errors` for field-level validation failures).
    extensions: Map<String, Value>,
    /// Extra response headers (e.g. `WWW-Authenticate`, `Retry-After`).
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem with `status` and its standard reason as the title.
    pub fn new(status: StatusCode) -> Problem {
        Problem {
            status,
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            detail: None,
            extra: Box::default(),
        }
    }

    /// Sets the human-readable detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Problem {
        self.detail = Some(detail.into());
        self
    }

    /// Sets the title.
    pub fn title(mut self, title: impl Into<String>) -> Problem {
        self.title = title.into();
        self
    }

    /// Adds an extension member.
    pub fn with(mut self, name: &str, value: impl Serialize) -> Problem {
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.extra.extensions.insert(name.to_owned(), value);
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: header::HeaderName, value: HeaderValue) -> Problem {
        self.extra.headers.push((name, value));
        self
    }

    /// Sets the problem type URI (instead of `about:blank`).
    pub fn kind(mut self, uri: impl Into<String>) -> Problem {
        self.extra.kind = Some(uri.into());
        self
    }

    /// An extension member, if set.
    pub fn extension(&self, name: &str) -> Option<&Value> {
        self.extra.extensions.get(name)
    }

    /// 400 with a reason.
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST).detail(detail)
    }

    /// 422: the request was well-formed but its content is not acceptable.
    pub fn unprocessable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY).detail(detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND).detail(detail)
    }

    /// 409.
    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT).detail(detail)
    }

    /// 403.
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN).detail(detail)
    }

    /// 401 with a `WWW-Authenticate: Bearer` challenge (RFC 6750).
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        let detail = detail.into();
        let challenge = format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            detail.replace(['"', '\\'], "'")
        );
        let value = HeaderValue::from_str(&challenge)
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""));
        Problem::new(StatusCode::UNAUTHORIZED)
            .detail(detail)
            .header(header::WWW_AUTHENTICATE, value)
    }

    /// 500 for a failure inside the service: logs `cause` with its source chain and
    /// answers with nothing of it.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Problem {
        tracing::error!(error = %error_chain(cause), "internal error");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
            .detail("the service failed to handle the request; it has been logged")
    }

    /// 503: a dependency (database, bus, key set) is unavailable.
    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE).detail(detail)
    }
}

/// One invalid input field, as listed in a 422 answer's `errors` member.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name or path in the request (`email`, `items[0].qty`).
    pub field: Cow<'static, str>,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// `field` is wrong because `message`.
    pub fn new(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl Problem {
    /// 422 listing every invalid field: `detail` joins them (`email: …; password: …`) and
    /// the `errors` member carries them one by one.
    pub fn invalid(errors: Vec<FieldError>) -> Problem {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Problem::unprocessable(detail).with("errors", errors)
    }
}

/// `error: cause: cause`, for logs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(out, ": {s}");
        source = s.source();
    }
    out
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let Extra {
            kind,
            extensions,
            headers,
        } = *self.extra;
        let mut body = Map::new();
        body.insert(
            "type".into(),
            Value::String(kind.unwrap_or_else(|| "about:blank".into())),
        );
        body.insert("title".into(), Value::String(self.title));
        body.insert("status".into(), Value::from(self.status.as_u16()));
        if let Some(d) = self.detail {
            body.insert("detail".into(), Value::String(d));
        }
        body.extend(extensions);
        let bytes = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
        let mut resp = (self.status, bytes).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in headers {
            h.append(name, value);
        }
        resp
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.title)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl From<DbError> for Problem {
    fn from(e: DbError) -> Problem {
        match e {
            DbError::Conflict => Problem::conflict("a resource with the same key already exists"),
            DbError::NotFound => Problem::not_found("no such resource"),
            DbError::Other(ref cause) => {
                Problem::internal(cause as &(dyn std::error::Error + 'static))
            }
        }
    }
}

/// `axum::Json` whose rejections are problems: a wrong content type is 415, a body that
/// is not JSON is 400, JSON of the wrong shape is 422; each says why.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// `axum::extract::Query` whose rejection is a problem: a query string that does not
/// parse as `T` is 400, saying why.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rejection) => Err(Problem::bad_request(rejection.body_text())),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(r: JsonRejection) -> Problem {
    let status = r.status();
    let detail = match &r {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a request body with Content-Type: application/json".to_owned()
        }
        _ => r.body_text(),
    };
    Problem::new(status).detail(detail)
}

#[doc(hidden)]
pub mod __private {
    pub use axum::response::{IntoResponse, Response};
}

/// The glue every service's error enum needs, written once. The enum has a variant
/// `Problem(Problem)` (answers already shaped, from extractors and the identity checks) and
/// `Invalid(Vec<FieldError>)` (422), and an inherent `fn problem(self) -> Problem` for the
/// rest; this adds `From<Problem>`, `IntoResponse` (`problem+json`), and
/// `Error::field(name, message)` for one invalid field. With `db: Variant` it also adds
/// `From<sqlx::Error>` through `Variant(DbError)`.
///
/// ```ignore
/// kit::problem_glue!(Error, db: Db);
/// ```
#[macro_export]
macro_rules! problem_glue {
    ($error:ident) => {
        impl From<$crate::Problem> for $error {
            fn from(p: $crate::Problem) -> $error {
                $error::Problem(p)
            }
        }

        impl $crate::problem::__private::IntoResponse for $error {
            fn into_response(self) -> $crate::problem::__private::Response {
                $crate::problem::__private::IntoResponse::into_response(self.problem())
            }
        }

        impl $error {
            /// One invalid field: 422.
            pub fn field(
                field: impl Into<std::borrow::Cow<'static, str>>,
                message: impl Into<String>,
            ) -> $error {
                $error::Invalid(vec![$crate::problem::FieldError::new(field, message)])
            }
        }
    };
    ($error:ident, db: $variant:ident) => {
        $crate::problem_glue!($error);

        impl From<sqlx::Error> for $error {
            fn from(e: sqlx::Error) -> $error {
                $error::$variant(e.into())
            }
        }
    };
}

/// The error of a service whose handlers fail only in the common ways (notification,
/// analytics): a service with failures of its own keeps its own enum with
/// [`problem_glue!`](crate::problem_glue).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
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

crate::problem_glue!(ServiceError, db: Db);

impl ServiceError {
    fn problem(self) -> Problem {
        match self {
            ServiceError::Invalid(errors) => Problem::invalid(errors),
            ServiceError::NotFound(what) => Problem::not_found(what),
            ServiceError::Problem(p) => p,
            ServiceError::Db(e) => e.into(),
        }
    }
}

/// Parses an optional JSON body: an empty body, or `null`, is `T::default()` (the OpenAPI
/// document describes such a body as "null or T"); anything else must be a `T` (422).
pub fn optional_body<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice::<Option<T>>(body)
        .map(Option::unwrap_or_default)
        .map_err(|e| Problem::unprocessable(format!("the body is not valid: {e}")))
}
