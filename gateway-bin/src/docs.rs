//! `/api/docs` in platform mode: the operations of every service the process runs, in one
//! OpenAPI 3.1 document, shown with Swagger UI.
//!
//! Swagger UI comes from the npm registry (`swagger-ui-dist`, see `assets/swagger-ui/`),
//! vendored into the repository and compiled into the binary: the page loads nothing from
//! anywhere but this gateway, so it works on a machine with no internet. The document is
//! each service's own (`GET /openapi.json` on the service) merged, with the paths as the
//! gateway serves them: under `/api`, except the JWKS.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use kit::service::Launcher;
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder, Server};

/// Where the page lives (the gateway routes this prefix to the docs listener as is).
pub const PREFIX: &str = "/api/docs";

/// Paths the gateway serves at the root rather than under `/api`.
const AT_ROOT: &[&str] = &["/.well-known/jwks.json"];

/// The platform's document: the services' documents merged. Two services defining a schema
/// of the same name differently, or the same operation, is an error naming it (the merge
/// would otherwise keep one silently).
pub fn document(services: &[&Launcher]) -> Result<OpenApi, String> {
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Gatehouse platform API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Every service's operations, as the gateway serves them. Sign in with \
                     `POST /auth/login` and use its `access_token` with Authorize.",
                ))
                .build(),
        )
        .servers(Some([Server::new("/api")]))
        .build();
    for service in services {
        let part = (service.openapi)();
        if let (Some(have), Some(add)) = (&doc.components, &part.components) {
            for (name, schema) in &add.schemas {
                if let Some(existing) = have.schemas.get(name) {
                    if json(existing) != json(schema) {
                        return Err(format!(
                            "the {} service's schema {name} differs from another service's",
                            service.name
                        ));
                    }
                }
            }
        }
        for (path, item) in &part.paths.paths {
            if let Some(existing) = doc.paths.paths.get(path) {
                if json(existing) != json(item) {
                    return Err(format!(
                        "the {} service's path {path} is also another service's",
                        service.name
                    ));
                }
            }
        }
        doc.merge(part);
    }
    for path in AT_ROOT {
        if let Some(item) = doc.paths.paths.get_mut(*path) {
            item.servers = Some(vec![Server::new("/")]);
        }
    }
    Ok(doc)
}

/// A part of a document as JSON, to compare two.
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Gatehouse API</title>
<link rel="icon" type="image/png" href="/api/docs/favicon-32x32.png">
<link rel="stylesheet" href="/api/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/api/docs/swagger-ui-bundle.js"></script>
<script src="/api/docs/init.js"></script>
</body>
</html>
"##;

const INIT: &str = r##"window.ui = SwaggerUIBundle({
  url: "/api/docs/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  docExpansion: "list",
  validatorUrl: null
});
"##;

macro_rules! asset {
    ($file:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets/swagger-ui/",
            $file
        ))
    };
}

fn static_file(content_type: &'static str, body: &'static [u8]) -> axum::routing::MethodRouter {
    get(move || async move {
        (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            body,
        )
            .into_response()
    })
}

/// The page, its assets and the document, under [`PREFIX`].
pub fn router(doc: &OpenApi) -> Router {
    let json: &'static [u8] = Box::leak(
        doc.to_json()
            .expect("an OpenAPI document serializes")
            .into_bytes()
            .into_boxed_slice(),
    );
    let page = get(|| async {
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                // Only this origin's scripts; Swagger UI sets inline styles.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
                ),
            ],
            PAGE,
        )
            .into_response()
    });
    Router::new()
        .route(PREFIX, page.clone())
        .route(&format!("{PREFIX}/"), page)
        .route(
            &format!("{PREFIX}/openapi.json"),
            static_file("application/json", json),
        )
        .route(
            &format!("{PREFIX}/init.js"),
            static_file("text/javascript", INIT.as_bytes()),
        )
        .route(
            &format!("{PREFIX}/swagger-ui-bundle.js"),
            static_file("text/javascript", asset!("swagger-ui-bundle.js")),
        )
        .route(
            &format!("{PREFIX}/swagger-ui.css"),
            static_file("text/css", asset!("swagger-ui.css")),
        )
        .route(
            &format!("{PREFIX}/favicon-32x32.png"),
            static_file("image/png", asset!("favicon-32x32.png")),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::SERVICES;

    #[test]
    fn the_platform_document_has_every_services_operations_and_no_clash() {
        let all: Vec<&Launcher> = SERVICES.iter().collect();
        let doc = document(&all).expect("the services' documents merge");
        let json: serde_json::Value = serde_json::from_str(&doc.to_json().unwrap()).unwrap();
        let count = |v: &serde_json::Value| {
            v["paths"].as_object().map_or(0, |p| {
                p.values().map(|i| i.as_object().unwrap().len()).sum()
            })
        };
        let mut sum = 0;
        for l in &SERVICES {
            let part: serde_json::Value =
                serde_json::from_str(&(l.openapi)().to_json().unwrap()).unwrap();
            let n = count(&part);
            assert!(n > 0, "the {} service documents no operation", l.name);
            sum += n;
        }
        // Each path item also holds "servers" for the JWKS: count only methods.
        let merged: usize = json["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|i| {
                i.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| *k != "servers")
                    .count()
            })
            .sum();
        assert_eq!(merged, sum, "no operation lost in the merge");
        assert_eq!(json["servers"][0]["url"], "/api");
    }
}
