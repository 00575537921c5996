use std::time::{Duration, Instant};

use kit::Verifier;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn login_issues_a_15_minute_eddsa_token_that_verifies_against_the_published_jwks() {
    for db in kit::testing::databases().await {
        let u = spawn(db).await;
        assert_eq!(
            u.register("ann@example.com").await.status(),
            StatusCode::CREATED
        );
        let r = u.login_with("ann@example.com", PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 900);
        let access = body["access_token"].as_str().unwrap();
        assert!(body["refresh_token"].as_str().unwrap().len() >= 43);

        let header = jsonwebtoken::decode_header(access).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
        let verifier = Verifier::remote(
            &u.app.url("/.well-known/jwks.json"),
            "gatehouse-user",
            "gatehouse",
        );
        let id = verifier
            .verify(access)
            .await
            .expect("verifies via the JWKS URL");
        assert_eq!(id.roles, ["customer"]);
        assert!(id.permissions.contains(&"orders:write".to_string()));
        assert!(!id.session_id.is_empty() && !id.token_id.is_empty());
        let claims: Value = {
            use base64::Engine;
            let payload = access.split('.').nth(1).unwrap();
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(payload)
                    .unwrap(),
            )
            .unwrap()
        };
        for claim in [
            "sub", "iss", "aud", "exp", "iat", "jti", "sid", "roles", "perms",
        ] {
            assert!(claims.get(claim).is_some(), "claim {claim}");
        }
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            900
        );
        let me: Value = u.get("/users/me", access).await.json().await.unwrap();
        assert_eq!(me["email"], "ann@example.com");
    }
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_answer_after_the_same_work() {
    let u = spawn(kit::testing::sqlite().await).await;
    assert_eq!(
        u.register("ann@example.com").await.status(),
        StatusCode::CREATED
    );
    let wrong = u.login_with("ann@example.com", "wrong password here").await;
    let unknown = u
        .login_with("nobody@example.com", "wrong password here")
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem(wrong).await, problem(unknown).await);

    // Both paths run one argon2id verification: without the dummy hash the unknown email
    // would answer ~50x faster. Medians of a few tries each, with a wide margin for noise.
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..4 {
        // Fresh emails so the back-off never kicks in.
        let email = format!("t{i}@example.com");
        assert_eq!(u.register(&email).await.status(), StatusCode::CREATED);
        let t = Instant::now();
        u.login_with(&email, "wrong password here").await;
        known.push(t.elapsed());
        let t = Instant::now();
        u.login_with(&format!("ghost{i}@example.com"), "wrong password here")
            .await;
        unknown.push(t.elapsed());
    }
    let (k, n) = (median(&mut known), median(&mut unknown));
    let ratio = n.as_secs_f64() / k.as_secs_f64();
    assert!(
        (0.33..3.0).contains(&ratio),
        "unknown email {n:?} vs wrong password {k:?}"
    );
}

#[tokio::test]
async fn failed_logins_back_off_per_email_whether_or_not_it_exists() {
    for db in kit::testing::databases().await {
        let u = spawn(db).await;
        assert_eq!(
            u.register("ann@example.com").await.status(),
            StatusCode::CREATED
        );
        for email in ["ann@example.com", "ghost@example.com"] {
            for attempt in 1..=5 {
                let r = u.login_with(email, "wrong password here").await;
                assert_eq!(
                    r.status(),
                    StatusCode::UNAUTHORIZED,
                    "{}: {email} attempt {attempt}",
                    u.label()
                );
            }
            // The sixth failure locks the email for 1 s; the next try is refused unchecked.
            assert_eq!(
                u.login_with(email, "wrong password here").await.status(),
                StatusCode::UNAUTHORIZED
            );
            let r = u.login_with(email, PASSWORD).await;
            assert_eq!(
                r.status(),
                StatusCode::TOO_MANY_REQUESTS,
                "{}: {email}",
                u.label()
            );
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry), "Retry-After {retry}");
        }
        // After the lock, the right password works and clears the count.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            u.login_with("ann@example.com", PASSWORD).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            u.login_with("ann@example.com", "wrong password here")
                .await
                .status(),
            StatusCode::UNAUTHORIZED,
            "the count starts again from zero"
        );
    }
}
