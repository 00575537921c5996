//! The embedded bus keeps what it was given across a crash: a real SQLite log, the real
//! relay and inbox, and a process killed with SIGKILL in the middle of a delivery.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use kit::bus::{Backlog, EventBus, InProcessBus, InProcessOptions};
use kit::inbox::ConsumerOptions;
use kit::relay::RelayOptions;
use kit::{outbox, Consumer, Db, Event, Handler, Relay};
use sqlx::migrate::Migrator;
use sqlx::{Any, Transaction};

static MIGRATIONS: Migrator = sqlx::migrate!("./tests/migrations");

const DEADLINE: Duration = Duration::from_secs(20);
const ACK_WAIT: Duration = Duration::from_secs(1);
/// Set (to the folder to work in) for the child process the crash test starts.
const CHILD_DIR: &str = "KIT_BUS_CRASH_CHILD_DIR";
const CONSUMER: &str = "totals";

fn options() -> InProcessOptions {
    InProcessOptions {
        ack_wait: ACK_WAIT,
        ..InProcessOptions::default()
    }
}

/// A service's database in `dir`: the producer's holds the outbox, the consumer's the
/// inbox and the counter (two services, two databases, as in platform mode).
async fn app_db(dir: &Path, name: &str) -> Db {
    let db = Db::connect(&format!("sqlite://{}/{name}.db", dir.display()))
        .await
        .expect("app database");
    db.migrate(&MIGRATIONS).await.expect("migrate");
    db
}

fn fast_relay() -> RelayOptions {
    RelayOptions {
        poll_interval: Duration::from_millis(50),
        ..RelayOptions::default()
    }
}

/// Takes the event and never finishes: the transaction never commits, nothing is acked.
struct Stall {
    marker: std::path::PathBuf,
}

#[async_trait::async_trait]
impl Handler for Stall {
    async fn handle(
        &self,
        _tx: &mut Transaction<'static, Any>,
        event: &Event,
    ) -> Result<(), kit::bus::BoxError> {
        std::fs::write(&self.marker, &event.id)?;
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// Counts the events it applies, in the consumer's transaction.
struct Count;

#[async_trait::async_trait]
impl Handler for Count {
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Any>,
        _event: &Event,
    ) -> Result<(), kit::bus::BoxError> {
        sqlx::query("UPDATE counters SET value = value + 1 WHERE name = 'handled'")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

async fn handled(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT value FROM counters WHERE name = 'handled'")
        .fetch_one(db.pool())
        .await
        .expect("counter")
}

async fn sent_ids(db: &Db) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM kit_outbox WHERE sent_at IS NOT NULL")
        .fetch_all(db.pool())
        .await
        .expect("outbox")
}

/// The process the crash test kills: it records an event, relays it onto the bus in
/// `KIT_BUS_CRASH_CHILD_DIR`, and stalls in the consumer's handler. Run by
/// `a_delivery_in_flight_when_the_process_is_killed_is_handled_once_after_the_restart`.
#[tokio::test]
#[ignore = "started by the crash test as its child process"]
async fn crash_child() {
    let dir = std::path::PathBuf::from(std::env::var(CHILD_DIR).expect("the child's folder"));
    let producer = app_db(&dir, "producer").await;
    let consumer_db = app_db(&dir, "consumer").await;
    sqlx::query("INSERT INTO counters (name, value) VALUES ('handled', 0)")
        .execute(consumer_db.pool())
        .await
        .unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(
        InProcessBus::open(&dir.join("bus.db"), options())
            .await
            .unwrap(),
    );
    let marker = dir.join("received");
    let _consumer = Consumer::spawn(
        consumer_db,
        bus.clone(),
        CONSUMER,
        "account.>",
        Stall { marker },
        ConsumerOptions::default(),
    )
    .await
    .unwrap();
    let mut tx = producer.begin().await.unwrap();
    outbox::record(&mut tx, "account.added", &serde_json::json!({"amount": 1}))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let _relay = Relay::spawn(producer, bus, fast_relay());
    tokio::time::sleep(Duration::from_secs(60)).await;
    panic!("the crash test should have killed this process by now");
}

/// Polls `check` until it returns `Some`, failing after [`DEADLINE`].
async fn wait_for<T, Fut>(what: &str, check: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    kit::testing::eventually(what, DEADLINE, check).await
}

#[tokio::test]
async fn a_delivery_in_flight_when_the_process_is_killed_is_handled_once_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "crash_child", "--nocapture"])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child process");
    let marker = dir.path().join("received");
    let received = wait_for("the child's consumer got the event", || async {
        std::fs::read_to_string(&marker)
            .ok()
            .filter(|s| !s.is_empty())
    })
    .await;
    let producer = app_db(dir.path(), "producer").await;
    // The relay marks the row sent once the bus stored it; from then on only the bus has it.
    let sent = wait_for("the relay marked the row sent", || async {
        let ids = sent_ids(&producer).await;
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    assert_eq!(sent, vec![received.clone()]);
    child.kill().expect("SIGKILL the child");
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed: {status:?}");
    let db = app_db(dir.path(), "consumer").await;
    assert_eq!(handled(&db).await, 0, "the stalled handler never committed");

    // The restart: same files, a consumer that finishes, and the relay as a service runs it.
    let bus: Arc<dyn EventBus> = Arc::new(
        InProcessBus::open(&dir.path().join("bus.db"), options())
            .await
            .expect("reopen the bus log after the crash"),
    );
    let relay = Relay::spawn(producer, bus.clone(), fast_relay());
    let consumer = Consumer::spawn(
        db.clone(),
        bus.clone(),
        CONSUMER,
        "account.>",
        Count,
        ConsumerOptions::default(),
    )
    .await
    .unwrap();
    wait_for("the event is handled after the restart", || async {
        (handled(&db).await == 1).then_some(())
    })
    .await;
    // Past several ack waits: no second delivery applies it again, and the bus agrees.
    tokio::time::sleep(ACK_WAIT * 3).await;
    assert_eq!(handled(&db).await, 1, "handled once");
    let backlog = bus.backlog(CONSUMER).await.unwrap();
    assert_eq!(backlog.undelivered, 0);
    assert_eq!(backlog.unacked, 0);
    assert_eq!(
        backlog.delivered, 2,
        "delivered to the stalled consumer, then once more after the restart"
    );
    consumer.shutdown().await;
    relay.shutdown().await;
}

fn event(n: i64) -> Event {
    Event {
        id: kit::db::new_id(),
        topic: "account.added".into(),
        occurred_at: kit::db::now_ms(),
        payload: serde_json::json!({ "n": n }),
        traceparent: None,
    }
}

#[tokio::test]
async fn a_consumer_away_across_restarts_gets_every_event_in_order_however_many() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    // Settled events are deleted at once, so only the away consumer keeps them.
    let eager = InProcessOptions {
        keep_settled: Duration::ZERO,
        ..options()
    };
    let mut published = Vec::new();
    {
        let bus = InProcessBus::open(&path, eager.clone()).await.unwrap();
        drop(bus.subscribe("away", "account.>").await.unwrap());
        let mut present = bus.subscribe("present", ">").await.unwrap();
        for n in 0..600 {
            let e = event(n);
            bus.publish(&e).await.unwrap();
            published.push(e.id);
            let d = present.next().await.unwrap().unwrap();
            assert_eq!(d.event.id, *published.last().unwrap());
            d.ack().await.unwrap();
        }
    }
    let bus = InProcessBus::open(&path, eager).await.unwrap();
    assert_eq!(
        bus.backlog("away").await.unwrap(),
        Backlog {
            undelivered: 600,
            unacked: 0,
            delivered: 0
        }
    );
    let mut away = bus.subscribe("away", "account.>").await.unwrap();
    for id in &published {
        let d = tokio::time::timeout(DEADLINE, away.next())
            .await
            .expect("in time")
            .unwrap()
            .unwrap();
        assert_eq!(&d.event.id, id);
        d.ack().await.unwrap();
    }
    let present = bus.backlog("present").await.unwrap();
    assert_eq!((present.undelivered, present.unacked), (0, 0));
}

#[tokio::test]
async fn an_event_published_twice_is_delivered_once() {
    let bus = InProcessBus::in_memory(options()).await.unwrap();
    let mut sub = bus.subscribe("c", ">").await.unwrap();
    let e = event(1);
    bus.publish(&e).await.unwrap();
    bus.publish(&e).await.unwrap();
    let d = sub.next().await.unwrap().unwrap();
    assert_eq!(d.event, e);
    d.ack().await.unwrap();
    assert_eq!(
        bus.backlog("c").await.unwrap(),
        Backlog {
            undelivered: 0,
            unacked: 0,
            delivered: 1
        }
    );
}

#[tokio::test]
async fn a_second_process_on_the_same_log_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    let _first = InProcessBus::open(&path, options()).await.unwrap();
    let second = InProcessBus::open(&path, options()).await;
    let message = match second {
        Ok(_) => panic!("a second owner of {} was let in", path.display()),
        Err(e) => e.to_string(),
    };
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("another process"), "{message}");
}
