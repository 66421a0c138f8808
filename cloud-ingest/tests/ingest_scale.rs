//! Several replicas on one shared subscription split the work and do each piece once.

mod common;

use std::collections::HashSet;

use anyhow::Result;
use capture_protocol::{ClipEvent, Uploaded, Verdict};
use capture_tests::fixtures::{CoreSystem, Garage, Mosquitto, PgDatabase, RabbitMq};
use common::{DEADLINE, Device, Ingest, Servers, clip, put};
use futures::{StreamExt, TryStreamExt};

const NOTIFICATIONS: usize = 500;

#[tokio::test]
async fn two_replicas_on_one_shared_subscription_process_500_notifications_once() -> Result<()> {
    let (broker, garage, db) =
        tokio::try_join!(Mosquitto::start(), Garage::start(), PgDatabase::create())?;
    let rabbit = RabbitMq::shared();
    let secrets = tempfile::tempdir()?;
    let mut core = CoreSystem::bind(&rabbit, rabbit.names()).await?;
    let servers = Servers {
        broker: &broker,
        garage: &garage,
        pg_url: db.url(),
        amqp_url: rabbit.url(),
        exchange: &core.names.exchange,
        secrets: &secrets,
    };
    let first = Ingest::start(servers.config("")?).await?;
    let second = Ingest::start(servers.config("")?).await?;
    first.wait_ready().await?;
    second.wait_ready().await?;
    let mut device = Device::connect(&broker, "pi-07").await?;

    let clips: Vec<Uploaded> = futures::stream::iter(0..NOTIFICATIONS)
        .map(|i| {
            let garage = &garage;
            async move {
                let (content, mut uploaded) = clip(&format!("SO-SCALE-{}", i % 50), 256);
                put(garage, &mut uploaded, content).await?;
                anyhow::Ok(uploaded)
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    for uploaded in &clips {
        device.notify(uploaded).await?;
    }

    let expected: HashSet<String> = clips.iter().map(|c| c.clip_id.to_string()).collect();
    let mut confirmed = HashSet::new();
    for _ in 0..NOTIFICATIONS {
        let (_, confirm) = device.next_confirm().await?;
        assert_eq!(confirm.verdict, Verdict::Accepted);
        assert!(
            confirmed.insert(confirm.clip_id.to_string()),
            "confirmed twice: {}",
            confirm.clip_id
        );
    }
    assert_eq!(confirmed, expected);

    let mut events = HashSet::new();
    for _ in 0..NOTIFICATIONS {
        let (routing_key, event) = core.next_event_as::<ClipEvent>(DEADLINE).await?;
        assert_eq!(routing_key, "clip.completed");
        assert!(events.insert(event.id.clone()), "event twice: {}", event.id);
    }
    assert_eq!(events.len(), NOTIFICATIONS);
    core.nothing_more_within(std::time::Duration::from_secs(1))
        .await?;

    let rows: i64 = db
        .connect()
        .await?
        .query_one("SELECT count(*) FROM clips", &[])
        .await?
        .get(0);
    assert_eq!(rows, NOTIFICATIONS as i64);
    let accepted = "ingest_notifications_total{outcome=\"accepted\"}";
    let duplicate = "ingest_notifications_total{outcome=\"duplicate\"}";
    let (a, b) = (
        first.metric(accepted).await?,
        second.metric(accepted).await?,
    );
    assert_eq!(
        a + b,
        NOTIFICATIONS as f64,
        "each notification handled once"
    );
    assert!(a > 0.0 && b > 0.0, "both replicas took a share: {a} + {b}");
    assert_eq!(
        first.metric(duplicate).await? + second.metric(duplicate).await?,
        0.0
    );
    first.stop().await?;
    second.stop().await?;
    Ok(())
}
