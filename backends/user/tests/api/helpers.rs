//! The harness: a user service on port 0 over a fresh database, and client shorthands.

use kit::testing::{spawn_app, TestApp, TestDb};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use user_service::keys::KeySource;
use user_service::{router, AppState, Settings};

pub const PASSWORD: &str = "correct horse battery staple";

pub struct TestUser {
    pub app: TestApp,
    pub state: AppState,
    pub db: TestDb,
    pub dir: tempfile::TempDir,
}

pub fn settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::new(dir);
    s.signing_key = KeySource::File(dir.join("key.pem"));
    s
}

pub async fn spawn(db: TestDb) -> TestUser {
    let dir = tempfile::tempdir().unwrap();
    spawn_with(db, dir, |_| {}).await
}

pub async fn spawn_with(
    db: TestDb,
    dir: tempfile::TempDir,
    tweak: impl FnOnce(&mut Settings),
) -> TestUser {
    let mut s = settings(dir.path());
    tweak(&mut s);
    let state = AppState::build(db.db.clone(), s)
        .await
        .expect("user service state");
    let app = spawn_app(router(state.clone())).await;
    TestUser {
        app,
        state,
        db,
        dir,
    }
}

pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

impl TestUser {
    pub fn label(&self) -> &'static str {
        self.db.label()
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.app
            .client
            .post(self.app.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, access: &str) -> Response {
        self.app
            .client
            .get(self.app.url(path))
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
    }

    pub async fn put(&self, path: &str, access: &str, body: Value) -> Response {
        self.app
            .client
            .put(self.app.url(path))
            .bearer_auth(access)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str, access: &str) -> Response {
        self.app
            .client
            .delete(self.app.url(path))
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
    }

    /// A bodiless POST with a bearer token.
    pub async fn post_auth(&self, path: &str, access: &str) -> Response {
        self.app
            .client
            .post(self.app.url(path))
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json_auth(&self, path: &str, access: &str, body: Value) -> Response {
        self.app
            .client
            .post(self.app.url(path))
            .bearer_auth(access)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn register(&self, email: &str) -> Response {
        self.post(
            "/users",
            json!({ "email": email, "password": PASSWORD, "name": "Ann" }),
        )
        .await
    }

    pub async fn login_with(&self, email: &str, password: &str) -> Response {
        self.post(
            "/auth/login",
            json!({ "email": email, "password": password }),
        )
        .await
    }

    pub async fn login(&self, email: &str) -> Tokens {
        let r = self.login_with(email, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK, "{}: login", self.label());
        tokens(r).await
    }

    pub async fn refresh(&self, refresh: &str) -> Response {
        self.post("/auth/refresh", json!({ "refresh_token": refresh }))
            .await
    }

    /// A registered, logged-in account.
    pub async fn account(&self, email: &str) -> Tokens {
        assert_eq!(self.register(email).await.status(), StatusCode::CREATED);
        self.login(email).await
    }
}

pub async fn tokens(r: Response) -> Tokens {
    let v: Value = r.json().await.unwrap();
    Tokens {
        access: v["access_token"].as_str().unwrap().to_owned(),
        refresh: v["refresh_token"].as_str().unwrap().to_owned(),
    }
}

pub async fn problem(r: Response) -> Value {
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "errors are problem+json"
    );
    r.json().await.unwrap()
}
