use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::*;

#[tokio::test]
async fn a_service_gets_a_token_with_its_permissions_by_client_credentials() {
    let secret = "a long random service secret";
    let db = kit::testing::sqlite().await;
    let u = spawn_with(db, tempfile::tempdir().unwrap(), |s| {
        s.service_clients = vec![user_service::ServiceClient {
            id: "order".into(),
            secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
            permissions: vec!["inventory:reserve".into(), "payments:charge".into()],
        }]
    })
    .await;
    let source =
        kit::identity::TokenSource::client_credentials(&u.app.url("/auth/token"), "order", secret);
    let token = source.bearer().await.expect("a service token");
    let id = u.state.verifier.verify(&token).await.unwrap();
    assert_eq!(id.user_id, "service:order");
    assert_eq!(id.roles, ["service"]);
    assert_eq!(id.permissions, ["inventory:reserve", "payments:charge"]);

    for (body, status) in [
        (
            json!({ "grant_type": "client_credentials", "client_id": "order", "client_secret": "wrong" }),
            StatusCode::UNAUTHORIZED,
        ),
        (
            json!({ "grant_type": "client_credentials", "client_id": "nobody", "client_secret": secret }),
            StatusCode::UNAUTHORIZED,
        ),
        (
            json!({ "grant_type": "password", "client_id": "order", "client_secret": secret }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        assert_eq!(
            u.post("/auth/token", body.clone()).await.status(),
            status,
            "{body}"
        );
    }
}
