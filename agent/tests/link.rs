//! The MQTT link against a real Mosquitto: the outbox is delivered at least once, commands are
//! redelivered until acknowledged, presence is retained.

use std::time::Duration;

use capture_agent::link::{Link, LinkSettings};
use capture_agent::spool::{Spool, outbox, outbox::OutboxMessage};
use capture_tests::fixtures::{Mosquitto, wait_until};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(30);
const CMD: &str = "cap/test/station/pack-01/cmd";
const STATUS: &str = "cap/test/station/pack-01/status";

fn settings(broker: &Mosquitto) -> LinkSettings {
    LinkSettings {
        host: broker.host().to_owned(),
        port: broker.port(),
        client_id: "pi-01".into(),
        keep_alive: Duration::from_secs(5),
        credentials: None,
        tls: None,
        subscriptions: vec![CMD.into()],
        online: (STATUS.into(), br#"{"state":"online"}"#.to_vec()),
        offline: (STATUS.into(), br#"{"state":"offline"}"#.to_vec()),
    }
}

/// A client playing the line or the ingest: a persistent session, subscribed to `topics`.
async fn observer(
    broker: &Mosquitto,
    id: &str,
    topics: &[&str],
) -> (AsyncClient, mpsc::UnboundedReceiver<Publish>) {
    let mut options = MqttOptions::new(id, broker.host(), broker.port());
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    for topic in topics {
        client
            .subscribe(*topic, QoS::AtLeastOnce)
            .await
            .expect("subscribing");
        tokio::time::timeout(DEADLINE, subscribed.recv())
            .await
            .expect("a SUBACK within the deadline");
    }
    (client, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Publish>) -> Publish {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("a message within the deadline")
        .expect("the observer is running")
}

/// Waits until every outbox row was acknowledged by the broker and deleted.
async fn outbox_drained(spool: &Spool) {
    wait_until("the outbox emptied by PUBACKs", DEADLINE, || {
        let spool = spool.clone();
        async move { Ok((outbox_len(&spool).await == 0).then_some(())) }
    })
    .await
    .expect("the outbox drains");
}

async fn outbox_len(spool: &Spool) -> i64 {
    spool
        .call(|c| outbox::len(c))
        .await
        .expect("reading the outbox")
}

#[tokio::test]
async fn outbox_messages_reach_the_broker_and_leave_the_outbox_once_acknowledged() {
    let broker = Mosquitto::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool.db")).unwrap();
    let (_line, mut replies) = observer(&broker, "line", &["cap/test/station/pack-01/reply"]).await;
    spool
        .call(|c| {
            for n in 0..3 {
                let payload = format!(r#"{{"n":{n}}}"#).into_bytes();
                outbox::push(
                    c,
                    &OutboxMessage::new("cap/test/station/pack-01/reply", payload, false),
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();

    let (inbound, _commands) = mpsc::unbounded_channel();
    let link = Link::start(settings(&broker), spool.clone(), inbound);
    link.handle().flush();
    for n in 0..3 {
        assert_eq!(
            next(&mut replies).await.payload,
            format!(r#"{{"n":{n}}}"#).as_bytes()
        );
    }
    outbox_drained(&spool).await;
    link.shutdown();
}

#[tokio::test]
async fn messages_decided_while_the_broker_is_down_are_delivered_when_it_returns() {
    let mut broker = Mosquitto::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool.db")).unwrap();
    let (_ingest, mut uploaded) = observer(&broker, "ingest", &["cap/test/ingest/uploaded"]).await;
    let (inbound, _commands) = mpsc::unbounded_channel();
    let link = Link::start(settings(&broker), spool.clone(), inbound);
    let mut handle = link.handle();
    handle.connected().await;

    broker.stop().await.unwrap();
    spool
        .call(|c| {
            outbox::push(
                c,
                &OutboxMessage::new("cap/test/ingest/uploaded", b"clip-1".to_vec(), false),
            )
        })
        .await
        .unwrap();
    handle.flush();
    broker.restart().await.unwrap();

    assert_eq!(next(&mut uploaded).await.payload.as_ref(), b"clip-1");
    outbox_drained(&spool).await;
    link.shutdown();
}

#[tokio::test]
async fn a_command_not_acknowledged_is_redelivered_to_the_next_link_and_an_acknowledged_one_is_not()
{
    let broker = Mosquitto::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool.db")).unwrap();
    let (line, _) = observer(&broker, "line", &[]).await;

    // First link: receives the command, dies before acknowledging it.
    let (inbound, mut commands) = mpsc::unbounded_channel();
    let link = Link::start(settings(&broker), spool.clone(), inbound);
    link.handle().connected().await;
    line.publish(CMD, QoS::AtLeastOnce, false, r#"{"id":"c-1"}"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut commands).await.payload.as_ref(),
        br#"{"id":"c-1"}"#
    );
    link.shutdown();

    // Second link, same device id: the broker redelivers; this one acknowledges.
    let (inbound, mut commands) = mpsc::unbounded_channel();
    let link = Link::start(settings(&broker), spool.clone(), inbound);
    let command = next(&mut commands).await;
    assert_eq!(command.payload.as_ref(), br#"{"id":"c-1"}"#);
    link.handle().ack(&command).await.unwrap();
    line.publish(CMD, QoS::AtLeastOnce, false, r#"{"id":"c-2"}"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut commands).await.payload.as_ref(),
        br#"{"id":"c-2"}"#
    );
    let second = link.handle();
    // Acknowledge c-2 too, then say goodbye cleanly so nothing is in flight.
    link.handle().disconnect().await.unwrap();
    drop(second);
    link.shutdown();

    // Third link: only what was published after is delivered.
    let (inbound, mut commands) = mpsc::unbounded_channel();
    let link = Link::start(settings(&broker), spool.clone(), inbound);
    link.handle().connected().await;
    line.publish(CMD, QoS::AtLeastOnce, false, r#"{"id":"c-3"}"#)
        .await
        .unwrap();
    let first = next(&mut commands).await;
    assert_eq!(
        first.payload.as_ref(),
        br#"{"id":"c-2"}"#,
        "c-2 was never acknowledged, so it comes back before c-3; c-1 does not"
    );
    link.handle().ack(&first).await.unwrap();
    assert_eq!(
        next(&mut commands).await.payload.as_ref(),
        br#"{"id":"c-3"}"#
    );
    link.shutdown();
}

#[tokio::test]
async fn the_station_is_online_while_connected_and_offline_after_the_link_dies() {
    let broker = Mosquitto::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool.db")).unwrap();
    let (_watcher, mut status) = observer(&broker, "watcher", &[STATUS]).await;
    let (inbound, _commands) = mpsc::unbounded_channel();
    let link = Link::start(settings(&broker), spool, inbound);

    let online = next(&mut status).await;
    assert_eq!(online.payload.as_ref(), br#"{"state":"online"}"#);
    link.shutdown();
    let offline = next(&mut status).await;
    assert_eq!(offline.payload.as_ref(), br#"{"state":"offline"}"#);
}

/// The broker loses every session (no persistence) while the agent keeps deciding messages:
/// more rows are handed to the client than its request channel holds, the broker comes back
/// empty, and the link sends them again. A row may leave the outbox only after the PUBACK
/// of the publish that carried it: every deleted row's message is at the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_broker_lost_the_session_only_rows_whose_message_was_delivered_are_deleted() {
    const ROWS: usize = 200;
    let mut broker = Mosquitto::start_without_persistence().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool.db")).unwrap();
    let (inbound, _commands) = mpsc::unbounded_channel();
    let link = Link::start(settings(&broker), spool.clone(), inbound);
    let mut handle = link.handle();
    handle.connected().await;

    broker.stop().await.unwrap();
    // One retained message per row, each on its own topic: what the broker acknowledged is
    // what it holds, whoever subscribes later.
    spool
        .call(|c| {
            for n in 0..ROWS {
                outbox::push(
                    c,
                    &OutboxMessage::new(format!("test/row/{n}"), n.to_string().into_bytes(), true),
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
    handle.flush();
    // The link hands rows to its client while the broker is away, up to what the client's
    // request channel (64) takes.
    wait_until("rows handed to the client while the broker is down", DEADLINE, || {
        let handle = handle.clone();
        async move { Ok((handle.in_flight() >= 64).then_some(())) }
    })
    .await
    .unwrap();

    broker.restart().await.unwrap();
    // Cut the link as soon as the first rows leave the outbox, while most are in flight.
    wait_until("the first rows acknowledged after the restart", DEADLINE, || {
        let spool = spool.clone();
        async move { Ok((outbox_len(&spool).await < ROWS as i64).then_some(())) }
    })
    .await
    .unwrap();
    link.shutdown();

    let left: std::collections::BTreeSet<usize> = spool
        .call(|c| outbox::pending(c, ROWS))
        .await
        .unwrap()
        .into_iter()
        .map(|p| String::from_utf8(p.message.payload).unwrap().parse().unwrap())
        .collect();
    let deleted: std::collections::BTreeSet<usize> =
        (0..ROWS).filter(|n| !left.contains(n)).collect();
    assert!(!deleted.is_empty());
    let (_checker, mut held) = observer(&broker, "checker", &["test/row/#"]).await;
    let mut at_broker = std::collections::BTreeSet::new();
    let mut missing: Vec<usize> = deleted.iter().copied().collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while !missing.is_empty() {
        match tokio::time::timeout_at(until, held.recv()).await {
            Ok(Some(message)) => {
                at_broker.insert(String::from_utf8_lossy(&message.payload).parse::<usize>().unwrap());
                missing.retain(|n| !at_broker.contains(n));
            }
            _ => break,
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} deleted rows were never delivered: {missing:?} (the broker holds {} rows)",
        missing.len(),
        deleted.len(),
        at_broker.len()
    );
}
