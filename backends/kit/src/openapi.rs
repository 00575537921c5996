//! Each service's OpenAPI 3.1 document, generated from its handlers (utoipa), served at
//! `GET /openapi.json`.
//!
//! A service routes its API through [`utoipa_axum::router::OpenApiRouter`] with
//! `routes!(handler, …)`, so only annotated handlers are served and every served handler is
//! in the document: the two cannot drift. [`finish`] then adds what every service shares:
//!
//! - the `Problem` schema (`application/problem+json`, RFC 9457) and the `bearer` scheme
//!   (an EdDSA JWT from the user service);
//! - the answers the kit gives for any operation, as shared responses, added to each
//!   operation that can get them: `400` (a body or query that does not parse) and `422` (a
//!   field that fails validation) to operations with input, `415` (a body that is not JSON)
//!   to operations whose body is required,
//!   `401`/`403`/`503` (keys not reachable) to operations that need a token, `404` to
//!   operations on a path with an id, `409` to operations that take an `Idempotency-Key`,
//!   `413` to those and to operations with a body, and `500` everywhere.
//!
//! An operation's own annotation wins over these defaults (its description is more exact).

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::Required;
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, LicenseBuilder, OpenApi, Ref, RefOr, ResponseBuilder,
};
use utoipa::{IntoParams, PartialSchema, ToSchema};

/// The name of the bearer security scheme, for `security(("bearer" = []))`.
pub const BEARER: &str = "bearer";

/// An `application/problem+json` answer (RFC 9457), as every service writes it.
#[derive(ToSchema)]
#[schema(
    as = Problem,
    example = json!({
        "type": "about:blank",
        "title": "Unprocessable Entity",
        "status": 422,
        "detail": "the request has invalid fields",
        "errors": [{"field": "price.currency", "message": "must be three uppercase letters"}]
    })
)]
#[allow(dead_code)]
pub struct ProblemBody {
    /// A URI naming the problem type; `about:blank` when the status says it all.
    #[schema(rename = "type")]
    kind: String,
    /// A short summary of the problem type.
    title: String,
    /// The HTTP status code.
    status: u16,
    /// What went wrong with this request.
    detail: Option<String>,
    /// For `422`: each field that failed, by its JSON path.
    errors: Option<Vec<FieldError>>,
}

/// One field that failed validation.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FieldError {
    /// The field's JSON path, e.g. `lines[0].qty`.
    field: String,
    /// Why it was refused.
    message: String,
}

/// The `Idempotency-Key` request header of an operation behind an
/// [`IdempotencyLayer`](crate::idempotency::IdempotencyLayer) that requires it, for
/// `params(kit::openapi::IdempotencyKey)`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyKey {
    /// Required (400 without it): 1 to 255 visible ASCII characters, unique per intended
    /// operation (a UUID is a good choice), scoped to the caller. A retry with the same key
    /// and request gets the first answer again (marked `Idempotency-Replayed: true`) instead
    /// of doing the work twice; the same key with another request is 422; while the first
    /// request still runs, 409 with `Retry-After`.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]+$",
        example = "8e0f6c1a-2b7d-4c55-9f1e-3a4b5c6d7e8f"
    )]
    idempotency_key: String,
}

/// The shared responses, by status: (component name, description).
const SHARED: &[(&str, &str, &str)] = &[
    (
        "400",
        "BadRequest",
        "The request cannot be read: a body or query that does not parse.",
    ),
    ("401", "Unauthorized", "No valid bearer token."),
    (
        "403",
        "Forbidden",
        "The token is valid but lacks the role or permission.",
    ),
    ("404", "NotFound", "No such resource (or not yours)."),
    (
        "409",
        "Conflict",
        "A request with this Idempotency-Key is still being processed; retry after it ends.",
    ),
    (
        "413",
        "PayloadTooLarge",
        "The body is larger than the operation accepts.",
    ),
    (
        "415",
        "UnsupportedMediaType",
        "The body is not `application/json`.",
    ),
    (
        "422",
        "UnprocessableEntity",
        "A field failed validation (`errors` names each), or the Idempotency-Key was used \
         with another request.",
    ),
    (
        "500",
        "InternalServerError",
        "The service failed; retry later.",
    ),
    (
        "503",
        "ServiceUnavailable",
        "The keys that verify tokens (the user service's JWKS) cannot be fetched now.",
    ),
];

/// `doc` with the service's title and the shared parts (see the module docs).
pub fn finish(mut doc: OpenApi, service: &str, about: &str) -> OpenApi {
    doc.info = InfoBuilder::new()
        .title(format!("Gatehouse {service} service"))
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(about))
        .license(Some(LicenseBuilder::new().name("Apache-2.0").build()))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components
        .schemas
        .insert("Problem".into(), ProblemBody::schema());
    components
        .schemas
        .insert("FieldError".into(), FieldError::schema());
    components.security_schemes.insert(
        BEARER.into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "An access token from the user service (`POST /auth/login`), or a service \
                     token (`POST /auth/token`).",
                ))
                .build(),
        ),
    );
    for (_, name, description) in SHARED {
        components.responses.insert(
            (*name).into(),
            RefOr::T(
                ResponseBuilder::new()
                    .description(*description)
                    .content(
                        "application/problem+json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Problem")))
                            .build(),
                    )
                    .build(),
            ),
        );
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        let has_id = path.contains('{');
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            add_shared_responses(op, has_id);
        }
    }
    doc
}

fn add_shared_responses(op: &mut Operation, has_id: bool) {
    let params = op.parameters.as_deref().unwrap_or_default();
    let has_input = op.request_body.is_some()
        || params
            .iter()
            .any(|p| matches!(p.parameter_in, ParameterIn::Query));
    let idempotent = params.iter().any(|p| p.name == "Idempotency-Key");
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    for (status, name, _) in SHARED {
        let applies = match *status {
            "400" | "422" => has_input || idempotent,
            // An optional body is read by hand (no body, or JSON whatever its type).
            "415" => op
                .request_body
                .as_ref()
                .is_some_and(|b| matches!(b.required, Some(Required::True))),
            "401" | "403" | "503" => secured,
            "404" => has_id,
            "409" => idempotent,
            "413" => idempotent || op.request_body.is_some(),
            _ => true,
        };
        if applies {
            op.responses
                .responses
                .entry((*status).into())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name(*name)));
        }
    }
}

/// `GET /openapi.json`, answering `doc` (serialized once).
pub fn serve(doc: &OpenApi) -> Router {
    let body = doc.to_json().expect("an OpenAPI document serializes");
    Router::new().route(
        "/openapi.json",
        get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body).into_response() }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::security::SecurityRequirement;
    use utoipa::openapi::PathsBuilder;

    #[test]
    fn shared_responses_go_where_they_apply_and_own_ones_win() {
        let secured = OperationBuilder::new()
            .security(SecurityRequirement::new(BEARER, Vec::<String>::new()))
            .response("404", ResponseBuilder::new().description("no such thing"))
            .build();
        let public = OperationBuilder::new().build();
        let doc = utoipa::openapi::OpenApiBuilder::new()
            .paths(
                PathsBuilder::new()
                    .path("/things/{id}", PathItem::new(HttpMethod::Get, secured))
                    .path("/things", PathItem::new(HttpMethod::Get, public)),
            )
            .build();
        let doc = finish(doc, "test", "about");
        let json: serde_json::Value = serde_json::from_str(&doc.to_json().unwrap()).unwrap();
        assert_eq!(json["openapi"], "3.1.0");
        let by_id = &json["paths"]["/things/{id}"]["get"]["responses"];
        assert_eq!(by_id["404"]["description"], "no such thing");
        assert_eq!(by_id["401"]["$ref"], "#/components/responses/Unauthorized");
        assert!(by_id.get("409").is_none(), "no Idempotency-Key");
        let list = &json["paths"]["/things"]["get"]["responses"];
        assert!(list.get("401").is_none(), "public");
        assert!(list.get("404").is_none(), "no id in the path");
        assert_eq!(
            list["500"]["$ref"],
            "#/components/responses/InternalServerError"
        );
        assert_eq!(
            json["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
