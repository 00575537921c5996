//! A channel of the embedder's own (here an SMS sender that records what it is given):
//! recipients from its sender, the queue's guarantees, and a place in the preferences.

use std::sync::{Arc, Mutex};

use notification_service::catalog::Channel;
use notification_service::queue::{Delivery, Outcome};
use notification_service::ChannelSender;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{Any, Transaction};

use crate::helpers::{eventually, start_with};

const SMS: Channel = Channel::custom("sms");

#[derive(Default)]
struct Sms {
    sent: Mutex<Vec<(String, String)>>,
}

#[async_trait::async_trait]
impl ChannelSender for Sms {
    fn channel(&self) -> Channel {
        SMS
    }

    async fn recipients(
        &self,
        _tx: &mut Transaction<'static, Any>,
        user: &str,
    ) -> Result<Vec<String>, kit::bus::BoxError> {
        Ok(vec![format!("+{user}")])
    }

    async fn send(&self, d: &Delivery) -> Outcome {
        self.sent
            .lock()
            .unwrap()
            .push((d.recipient.clone(), d.kind.clone()));
        Outcome::Sent
    }
}

#[tokio::test]
async fn an_embedders_channel_gets_each_notification_once_and_can_be_turned_off() {
    for db in kit::testing::databases().await {
        let sms = Arc::new(Sms::default());
        let t = start_with(db, kit::testing::bus().await, vec![sms.clone()], |_| {}).await;
        let label = t.label();
        let ann = t.user("ann");
        t.confirmed("ann", "o-1").await;
        eventually("the text went out", || async {
            (sms.sent.lock().unwrap().len() == 1).then_some(())
        })
        .await;
        assert_eq!(
            sms.sent.lock().unwrap()[0],
            ("+ann".to_owned(), "order_confirmed".to_owned()),
            "{label}"
        );

        // It is a channel like the others in the preferences.
        let prefs: Value = t
            .get("/notifications/preferences", &ann)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(prefs.as_array().unwrap().len(), 5 * 4, "{label}: {prefs}");
        let r = t
            .put(
                "/notifications/preferences",
                &ann,
                json!([{"category": "orders", "channel": "sms", "enabled": false}]),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{label}");
        let r = t
            .put(
                "/notifications/preferences",
                &ann,
                json!([{"category": "orders", "channel": "pigeon", "enabled": false}]),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{label}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], "[0].channel", "{problem}");

        // Turned off: the next order is dropped for sms (the inbox still has it).
        t.confirmed("ann", "o-2").await;
        eventually("the second text is dropped", || async {
            let dropped = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM deliveries WHERE channel = 'sms' AND state = 'dropped'",
            )
            .fetch_one(t.db.db.pool())
            .await
            .unwrap();
            (dropped == 1).then_some(())
        })
        .await;
        assert_eq!(sms.sent.lock().unwrap().len(), 1, "{label}");
        assert_eq!(t.inbox(&ann).await.len(), 2, "{label}");
    }
}
