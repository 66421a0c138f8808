//! Faults injected while orders are recorded and uploaded. Each scenario ends with the audit:
//! nothing recorded is lost and nothing reaches the core system twice under two ids.

use std::time::{Duration, Instant};

use capture_tests::fixtures::unique_name;
use capture_tests::system::{REPLY_WAIT, System, SystemOptions, reply_clips};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::audit;

/// A random source whose seed is printed, so that a failing run can be replayed with
/// `CAPTURE_E2E_SEED`.
fn rng(scenario: &str) -> StdRng {
    let seed = std::env::var("CAPTURE_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("{scenario}: CAPTURE_E2E_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// Starts `order`, records for `seconds`, stops it; both replies must be ok.
async fn record(system: &mut System, order: &str, seconds: f64) {
    system.ok("start", order).await.expect("start");
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    system.ok("stop", order).await.expect("stop");
}

async fn sleep_until(instant: Instant) {
    tokio::time::sleep(instant.saturating_duration_since(Instant::now())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_at_random_moments_while_recording_loses_nothing() {
    let mut rng = rng("kill while recording");
    let mut system = System::start(SystemOptions::default())
        .await
        .expect("system");
    for run in 0..10 {
        let order = format!("SO-KILL-REC-{run}");
        let start = system.command_for("start", &order);
        system.send(&start).await.expect("send start");
        if run % 2 == 0 {
            // After the reply: the clips exist and are being recorded.
            let reply = system.reply(&start["id"], REPLY_WAIT).await.expect("reply");
            assert_eq!(reply["ok"], true, "{reply}");
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..3000))).await;
        } else {
            // Around the command itself: before, during or after its inbox commit.
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        }
        system.agent.kill().expect("SIGKILL");
        system.ledger.faults += 1;
        system
            .agent
            .restart()
            .await
            .expect("the agent starts again");
        // The command is answered once the agent is back (from the inbox or redelivered).
        let reply = system.reply(&start["id"], REPLY_WAIT).await;
        if run % 2 == 1 {
            let reply = reply.expect("the start is answered after the restart");
            assert_eq!(reply["ok"], true, "{reply}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The line stops the order; the restart may already have sealed it (not_recording).
        let stop = system.command_for("stop", &order);
        let reply = system.command(stop).await.expect("stop reply");
        assert!(
            reply["ok"] == true || reply["error"]["code"] == "not_recording",
            "{reply}"
        );
    }
    let figures = audit(
        &mut system,
        "faults: agent SIGKILL while recording, 10 runs",
    )
    .await;
    assert_eq!(figures.orders, 10);
    assert_eq!(figures.faults, 10);
    assert_eq!(figures.completed + figures.failed, figures.clips);
    // A clip fails only when the kill came before its first fragment reached the disk:
    // "every clip failed" must not pass.
    assert!(
        figures.completed * 2 >= figures.clips,
        "only {} of {} clips completed",
        figures.completed,
        figures.clips
    );
    assert_eq!(figures.accepted_on_station, figures.completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_at_random_moments_while_uploading_loses_nothing() {
    let mut rng = rng("kill while uploading");
    // 600 kbit/s for both cameras: a 3 s clip takes seconds to upload.
    let mut system = System::start(SystemOptions {
        store_extra: "bandwidth_kbps = 600\n".into(),
        ..SystemOptions::default()
    })
    .await
    .expect("system");
    let mut hit_mid_upload = 0;
    for run in 0..5 {
        let order = format!("SO-KILL-UP-{run}");
        record(&mut system, &order, 3.0).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..2500))).await;
        system.pump(Duration::ZERO).await.expect("pump");
        let not_uploaded = system
            .ledger
            .clips
            .values()
            .filter(|c| c.order == order && !c.uploaded)
            .count();
        if not_uploaded > 0 {
            hit_mid_upload += 1;
        }
        system.agent.kill().expect("SIGKILL");
        system.ledger.faults += 1;
        system
            .agent
            .restart()
            .await
            .expect("the agent starts again");
    }
    println!("kill while uploading: {hit_mid_upload} of 5 kills before the upload was done");
    assert!(
        hit_mid_upload > 0,
        "no kill happened while a clip was uploading"
    );
    let figures = audit(&mut system, "faults: agent SIGKILL while uploading, 5 runs").await;
    assert_eq!(
        (figures.orders, figures.clips, figures.completed),
        (5, 10, 10)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_stopped_for_60_s_delays_uploads_and_loses_nothing() {
    let mut system = System::start(SystemOptions::default())
        .await
        .expect("system");
    record(&mut system, "SO-S3-BEFORE", 2.0).await;
    system.garage.stop().await.expect("garage stops");
    system.ledger.faults += 1;
    let back_at = Instant::now() + Duration::from_secs(60);
    record(&mut system, "SO-S3-DURING", 2.0).await;
    system.pump(Duration::from_secs(2)).await.expect("pump");
    assert!(
        system
            .ledger
            .clips
            .values()
            .any(|c| c.order == "SO-S3-DURING" && c.completed.is_empty()),
        "nothing can complete while the store is down"
    );
    sleep_until(back_at).await;
    system.garage.restart().await.expect("garage starts again");
    let figures = audit(&mut system, "faults: Garage stopped for 60 s").await;
    assert_eq!((figures.orders, figures.completed), (2, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_restarted_while_recording_and_killed_while_uploading_loses_nothing() {
    let mut system = System::start(SystemOptions::default())
        .await
        .expect("system");
    system.ok("start", "SO-MQTT-1").await.expect("start");
    tokio::time::sleep(Duration::from_secs(1)).await;
    system.broker.stop().await.expect("broker stops");
    system.ledger.faults += 1;
    tokio::time::sleep(Duration::from_secs(3)).await;
    system.broker.restart().await.expect("broker starts again");
    system
        .wait_online(REPLY_WAIT)
        .await
        .expect("the station is back online");
    system
        .ok("stop", "SO-MQTT-1")
        .await
        .expect("stop after the restart");

    // A crash of the broker just after the stop: the uploaded notifications and the
    // confirmations cross it.
    record(&mut system, "SO-MQTT-2", 2.0).await;
    system.broker.kill().await.expect("broker killed");
    system.ledger.faults += 1;
    tokio::time::sleep(Duration::from_secs(3)).await;
    system.broker.restart().await.expect("broker starts again");
    let figures = audit(&mut system, "faults: Mosquitto restarted and killed").await;
    assert_eq!((figures.orders, figures.completed), (2, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_stopped_for_60_s_holds_the_events_in_the_outbox() {
    let mut system = System::start(SystemOptions {
        private_rabbitmq: true,
        ..SystemOptions::default()
    })
    .await
    .expect("system");
    record(&mut system, "SO-AMQP-BEFORE", 2.0).await;
    system.rabbit.stop().await.expect("rabbitmq stops");
    system.ledger.faults += 1;
    let back_at = Instant::now() + Duration::from_secs(60);
    record(&mut system, "SO-AMQP-DURING", 2.0).await;
    sleep_until(back_at).await;
    system
        .rabbit
        .restart()
        .await
        .expect("rabbitmq starts again");
    let figures = audit(&mut system, "faults: RabbitMQ stopped for 60 s").await;
    assert_eq!((figures.orders, figures.completed), (2, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_crashed_and_restarted_loses_nothing() {
    let mut system = System::start(SystemOptions {
        private_postgres: true,
        ..SystemOptions::default()
    })
    .await
    .expect("system");
    record(&mut system, "SO-PG-BEFORE", 2.0).await;
    let server = system.catalog.server().expect("private postgres");
    server.kill().await.expect("postgres killed");
    system.ledger.faults += 1;
    record(&mut system, "SO-PG-DURING", 2.0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let server = system.catalog.server().expect("private postgres");
    server.restart().await.expect("postgres recovers");
    // And a clean restart under load.
    record(&mut system, "SO-PG-AFTER", 1.0).await;
    let server = system.catalog.server().expect("private postgres");
    server.stop().await.expect("postgres stops");
    server.restart().await.expect("postgres starts again");
    system.ledger.faults += 1;
    let figures = audit(&mut system, "faults: PostgreSQL killed, then restarted").await;
    assert_eq!((figures.orders, figures.completed), (3, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_killed_and_replaced_under_a_new_client_id_loses_nothing() {
    let mut rng = rng("ingest kill");
    let mut system = System::start(SystemOptions::default())
        .await
        .expect("system");
    for run in 0..3 {
        record(&mut system, &format!("SO-INGEST-{run}"), 2.0).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
        system.ingest.kill().expect("ingest killed");
        system.ledger.faults += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
        // As a Deployment's replacement pod comes back: under another name. What the broker
        // queued for the old session meanwhile stays there, never delivered.
        let new_id = unique_name("ingest");
        system
            .ingest
            .restart_as(&new_id)
            .await
            .expect("ingest starts again");
    }
    let figures = audit(
        &mut system,
        "faults: ingest SIGKILL, replaced under a new id, 3 runs",
    )
    .await;
    assert_eq!((figures.orders, figures.completed), (3, 6));
    assert_eq!(figures.accepted_on_station, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_replicas_killed_replaced_or_never_back_strand_no_notification() {
    let mut system = System::start(SystemOptions::default())
        .await
        .expect("system");
    // Two replicas share the notifications (Mosquitto hands them out in turn).
    let mut gone = system.start_replica().await.expect("a second replica");
    record(&mut system, "SO-REPLICA-1", 2.0).await;
    // One replica dies and never comes back: its persistent session stays in the shared
    // subscription, and the broker keeps queueing every other notification for it.
    gone.kill().expect("replica killed");
    system.ledger.faults += 1;
    record(&mut system, "SO-REPLICA-2", 2.0).await;
    record(&mut system, "SO-REPLICA-3", 2.0).await;
    // The other is killed while notifications flow and replaced under a new client id.
    system.ingest.kill().expect("ingest killed");
    system.ledger.faults += 1;
    record(&mut system, "SO-REPLICA-4", 2.0).await;
    let new_id = unique_name("ingest");
    system
        .ingest
        .restart_as(&new_id)
        .await
        .expect("the replacement starts");
    record(&mut system, "SO-REPLICA-5", 2.0).await;
    let figures = audit(
        &mut system,
        "faults: ingest replicas killed, replaced under a new id, never back",
    )
    .await;
    assert_eq!((figures.orders, figures.completed), (5, 10));
    assert_eq!(figures.accepted_on_station, 10);
    // Notifications were stranded on the dead sessions, and sent again.
    let resends = system
        .agent
        .metric("capture_notification_resends_total")
        .await
        .expect("metric");
    println!("ingest replicas: {resends} notifications sent again");
    assert!(resends >= 1.0, "no notification had to be sent again");
    drop(gone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_keeps_its_clips_refuses_start_and_records_again_when_space_returns() {
    // 1 MiB for clips; the store is down, so nothing can be accepted and evicted.
    let mut system = System::start(SystemOptions {
        max_bytes: Some("1MiB".into()),
        ..SystemOptions::default()
    })
    .await
    .expect("system");
    system.garage.stop().await.expect("garage stops");
    system.ledger.faults += 1;
    let started = system.ok("start", "SO-DISK-1").await.expect("start");
    let clips = reply_clips(&started);
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let probe = system.command_for("snapshot", "SO-DISK-PROBE");
        let reply = system.command(probe).await.expect("snapshot reply");
        if reply["ok"] == false {
            break reply;
        }
        assert!(Instant::now() < deadline, "the spool never filled: {reply}");
    };
    assert_eq!(refused["error"]["code"], "disk_full", "{refused}");
    system.ok("stop", "SO-DISK-1").await.expect("stop");
    let start = system.command_for("start", "SO-DISK-2");
    let reply = system.command(start).await.expect("start reply");
    assert_eq!(reply["error"]["code"], "disk_full", "{reply}");
    // Nothing un-uploaded is deleted to make room. (The stopped clips are sealed in the
    // background: their files get their final names within seconds.)
    for clip in &clips {
        let file = system
            .agent
            .spool_dir()
            .join("clips")
            .join(format!("{clip}.mp4"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !file.exists() {
            assert!(Instant::now() < deadline, "{} was kept", file.display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    system.garage.restart().await.expect("garage starts again");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let start = system.command_for("start", "SO-DISK-2");
        let reply = system.command(start).await.expect("start reply");
        if reply["ok"] == true {
            break;
        }
        assert_eq!(reply["error"]["code"], "disk_full", "{reply}");
        assert!(Instant::now() < deadline, "space never returned");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    system.ok("stop", "SO-DISK-2").await.expect("stop");
    let figures = audit(&mut system, "faults: spool full (1 MiB quota), store down").await;
    assert_eq!(figures.lost, 0);
    assert!(figures.completed >= 4, "{figures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_while_the_agent_is_offline_are_carried_out_when_it_is_back() {
    let mut system = System::start(SystemOptions::default())
        .await
        .expect("system");
    // Offline (SIGTERM, as systemd stops it): the broker keeps the commands for its session.
    system.agent.terminate().expect("SIGTERM");
    system.ledger.faults += 1;
    let start = system.command_for("start", "SO-OFFLINE-1");
    system.send(&start).await.expect("send");
    tokio::time::sleep(Duration::from_secs(2)).await;
    system
        .agent
        .restart()
        .await
        .expect("the agent starts again");
    let reply = system.reply(&start["id"], REPLY_WAIT).await.expect("reply");
    assert_eq!(reply["ok"], true, "{reply}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    system.ok("stop", "SO-OFFLINE-1").await.expect("stop");

    // A start and a stop both queued while the agent is down (crashed this time).
    system.agent.kill().expect("SIGKILL");
    system.ledger.faults += 1;
    let start = system.command_for("start", "SO-OFFLINE-2");
    let stop = system.command_for("stop", "SO-OFFLINE-2");
    system.send(&start).await.expect("send");
    system.send(&stop).await.expect("send");
    system
        .agent
        .restart()
        .await
        .expect("the agent starts again");
    let started = system.reply(&start["id"], REPLY_WAIT).await.expect("reply");
    assert_eq!(started["ok"], true, "{started}");
    let stopped = system.reply(&stop["id"], REPLY_WAIT).await.expect("reply");
    assert_eq!(stopped["ok"], true, "{stopped}");
    let figures = audit(&mut system, "faults: commands while the agent is offline").await;
    assert_eq!(figures.orders, 2);
    assert_eq!(figures.completed + figures.failed, 4);
}
