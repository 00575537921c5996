//! The live stream over a real WebSocket: only the recipient, replay after a reconnect.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{start, TestNotify};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects as `token`: in the Authorization header, or (a browser's way) as a subprotocol.
async fn connect(t: &TestNotify, token: &str, browser: bool, after: Option<&str>) -> Socket {
    let url = t.app.url("/notifications/ws").replace("http://", "ws://");
    let url = match after {
        Some(a) => format!("{url}?after={a}"),
        None => url,
    };
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    if browser {
        let protocols = format!("notifications.v1, bearer.{token}");
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&protocols).unwrap(),
        );
    } else {
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    }
    let (socket, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("handshake");
    if browser {
        assert_eq!(
            resp.headers().get("sec-websocket-protocol").unwrap(),
            "notifications.v1",
            "the server picks the protocol, never echoes the token"
        );
    }
    socket
}

/// The next notification on `socket`, or `None` after `wait`.
async fn next(socket: &mut Socket, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, socket.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(text)))) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["type"], "notification");
                return Some(v["notification"].clone());
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
}

const SOON: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(700);

#[tokio::test]
async fn only_the_recipient_gets_it_live_and_a_reconnect_replays_what_it_missed_once() {
    for db in kit::testing::databases().await {
        let t = start(db, |_| {}).await;
        t.registered("ann", "ann@example.com").await;
        t.registered("bob", "bob@example.com").await;
        let (ann, bob) = (t.user("ann"), t.user("bob"));
        crate::helpers::eventually("the welcomes are in", || async {
            (t.inbox(&ann).await.len() == 1 && t.inbox(&bob).await.len() == 1).then_some(())
        })
        .await;
        let mut a = connect(&t, &ann, false, None).await;
        let mut b = connect(&t, &bob, true, None).await;
        t.confirmed("ann", "o-1").await;
        let first = next(&mut a, SOON).await.expect("ann hears of it");
        assert_eq!(first["kind"], "order_confirmed");
        assert_eq!(first["body"], "Your order of 25.00 EUR is confirmed.");
        assert!(
            next(&mut b, QUIET).await.is_none(),
            "bob hears nothing of ann's"
        );
        assert!(next(&mut a, QUIET).await.is_none(), "once");

        // Away: two more happen; back with the last id seen, both arrive, in order, once.
        a.close(None).await.unwrap();
        drop(a);
        t.confirmed("ann", "o-2").await;
        t.publish(
            "payment.captured",
            serde_json::json!({"payment_intent_id": "p", "customer_id": "ann", "order_id": "o-2",
                           "status": "succeeded", "amount": 2500, "currency": "EUR",
                           "reason": null, "refund_id": null, "at": 1}),
        )
        .await;
        crate::helpers::eventually("both are in the inbox", || async {
            (t.inbox(&ann).await.len() == 4).then_some(())
        })
        .await;
        let mut a = connect(&t, &ann, true, Some(first["id"].as_str().unwrap())).await;
        let one = next(&mut a, SOON).await.unwrap();
        let two = next(&mut a, SOON).await.unwrap();
        assert_eq!(
            (one["kind"].as_str(), two["kind"].as_str()),
            (Some("order_confirmed"), Some("payment_captured"))
        );
        assert!(one["id"].as_str() < two["id"].as_str());
        assert!(next(&mut a, QUIET).await.is_none(), "nothing twice");
        // And live again on the same connection.
        t.confirmed("ann", "o-3").await;
        assert_eq!(next(&mut a, SOON).await.unwrap()["kind"], "order_confirmed");
        let metrics = t
            .app
            .client
            .get(t.app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("notification_websocket_clients 2"),
            "{metrics}"
        );
        a.send(Message::Close(None)).await.unwrap();
    }
}

#[tokio::test]
async fn a_handshake_without_a_valid_token_is_refused() {
    let t = start(kit::testing::sqlite().await, |_| {}).await;
    let url = t.app.url("/notifications/ws").replace("http://", "ws://");
    for token in [None, Some("bearer.not-a-token")] {
        let mut req = url.as_str().into_client_request().unwrap();
        if let Some(p) = token {
            req.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&format!("notifications.v1, {p}")).unwrap(),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{token:?}")
            }
            other => panic!("{token:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_client_that_sends_a_large_message_is_closed_and_pings_are_answered() {
    let t = start(kit::testing::sqlite().await, |_| {}).await;
    let mut a = connect(&t, &t.user("ann"), false, None).await;
    a.send(Message::Ping(b"still there?".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(SOON, a.next()).await.unwrap();
    assert!(
        matches!(&pong, Some(Ok(Message::Pong(p))) if p.as_ref() == b"still there?"),
        "{pong:?}"
    );
    // The stream has nothing to hear from a client: past 16 KiB it hangs up (1009).
    a.send(Message::Text("x".repeat(64 * 1024).into()))
        .await
        .unwrap();
    let closed = tokio::time::timeout(SOON, async {
        loop {
            match a.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("closed");
    assert!(matches!(closed, Some(1009) | None), "{closed:?}");
}
