use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_ends_the_session() {
    for db in kit::testing::databases().await {
        let u = spawn(db).await;
        let first = u.account("ann@example.com").await;
        let r = u.refresh(&first.refresh).await;
        assert_eq!(r.status(), StatusCode::OK, "{}", u.label());
        let second = tokens(r).await;
        assert_ne!(second.refresh, first.refresh);
        assert_eq!(
            u.get("/users/me", &second.access).await.status(),
            StatusCode::OK
        );

        // The spent token again: refused, and the whole session is dead.
        let r = u.refresh(&first.refresh).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{}", u.label());
        problem(r).await;
        assert_eq!(
            u.refresh(&second.refresh).await.status(),
            StatusCode::UNAUTHORIZED,
            "{}: the newest token of the session is dead too",
            u.label()
        );
        assert_eq!(
            u.get("/users/me", &second.access).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            u.refresh("no-such-token").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn two_parallel_refreshes_of_one_token_give_exactly_one_success_then_the_session_is_revoked()
{
    for db in kit::testing::databases().await {
        let u = spawn(db).await;
        for round in 0..3 {
            let t = u.account(&format!("r{round}@example.com")).await;
            let (a, b) = tokio::join!(u.refresh(&t.refresh), u.refresh(&t.refresh));
            let mut codes = [a.status().as_u16(), b.status().as_u16()];
            codes.sort();
            assert_eq!(codes, [200, 401], "{}: round {round}", u.label());
            let winner = if a.status() == StatusCode::OK { a } else { b };
            let next = tokens(winner).await;
            assert_eq!(
                u.refresh(&next.refresh).await.status(),
                StatusCode::UNAUTHORIZED,
                "{}: the loser's reuse revoked the session",
                u.label()
            );
        }
    }
}

#[tokio::test]
async fn logout_ends_the_session_for_access_and_refresh() {
    for db in kit::testing::databases().await {
        let u = spawn(db).await;
        let t = u.account("ann@example.com").await;
        let r = u.post_auth("/auth/logout", &t.access).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{}", u.label());
        assert_eq!(
            u.get("/users/me", &t.access).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            u.refresh(&t.refresh).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}
