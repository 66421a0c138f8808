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

/// A TCP relay between the link and the broker that can stop passing the link's PUBLISH
/// packets: once `budget` is set, it forwards that many more and drops the rest (everything
/// else, PINGREQ and PUBACK included, still passes), so the broker never receives them and
/// the test knows exactly which messages were delivered.
struct PublishGate {
    port: u16,
    budget: std::sync::Arc<std::sync::Mutex<Option<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PublishGate {
    async fn start(broker: &Mosquitto) -> PublishGate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the gate");
        let port = listener.local_addr().expect("the gate's port").port();
        let budget = std::sync::Arc::new(std::sync::Mutex::new(None));
        let upstream = (broker.host().to_owned(), broker.port());
        let shared = budget.clone();
        let task = tokio::spawn(async move {
            while let Ok((link, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let budget = shared.clone();
                tokio::spawn(async move {
                    let Ok(broker) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (from_link, mut to_link) = link.into_split();
                    let (mut from_broker, to_broker) = broker.into_split();
                    tokio::select! {
                        _ = gate_publishes(from_link, to_broker, budget) => {}
                        _ = tokio::io::copy(&mut from_broker, &mut to_link) => {}
                    }
                });
            }
        });
        PublishGate { port, budget, task }
    }

    /// From now on, forward only `n` more PUBLISH packets from the link.
    fn allow(&self, n: usize) {
        *self.budget.lock().expect("the gate's budget") = Some(n);
    }
}

impl Drop for PublishGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn gate_publishes(
    from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    budget: std::sync::Arc<std::sync::Mutex<Option<usize>>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut from = tokio::io::BufReader::new(from);
    loop {
        let first = from.read_u8().await?;
        let mut header = vec![first];
        let mut remaining = 0usize;
        for shift in [0, 7, 14, 21] {
            let byte = from.read_u8().await?;
            header.push(byte);
            remaining |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; remaining];
        from.read_exact(&mut body).await?;
        let pass = first >> 4 != 3
            || match &mut *budget.lock().expect("the gate's budget") {
                None => true,
                Some(0) => false,
                Some(n) => {
                    *n -= 1;
                    true
                }
            };
        if pass {
            to.write_all(&header).await?;
            to.write_all(&body).await?;
        }
    }
}

/// The broker loses every session (no persistence) while the agent keeps deciding messages:
/// more rows are handed to the client than its request channel holds (64), the broker comes
/// back empty, and the link sends them again. A row may leave the outbox only after the
/// PUBACK of the publish that carried it: every deleted row's message is at the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_broker_lost_the_session_only_rows_whose_message_was_delivered_are_deleted() {
    const ROWS: usize = 200;
    const DELIVERED: usize = 40;
    let mut broker = Mosquitto::start_without_persistence().await.unwrap();
    let gate = PublishGate::start(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool.db")).unwrap();
    let (inbound, _commands) = mpsc::unbounded_channel();
    let mut through_gate = settings(&broker);
    through_gate.port = gate.port;
    let link = Link::start(through_gate, spool.clone(), inbound);
    let mut handle = link.handle();
    tokio::time::timeout(DEADLINE, handle.connected())
        .await
        .expect("the link connects through the gate");

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
    // The link hands rows to its client while the broker is away, as many as the client's
    // request channel takes.
    wait_until(
        "rows handed to the client while the broker is down",
        DEADLINE,
        || {
            let handle = handle.clone();
            async move { Ok((handle.in_flight() >= 64).then_some(())) }
        },
    )
    .await
    .unwrap();

    // The broker returns without the session and receives only the first DELIVERED publishes
    // the link sends.
    gate.allow(DELIVERED);
    broker.restart().await.unwrap();
    let (_checker, mut held) = observer(&broker, "checker", &["test/row/#"]).await;
    let mut at_broker = std::collections::BTreeSet::new();
    while at_broker.len() < DELIVERED {
        let message = next(&mut held).await;
        at_broker.insert(
            String::from_utf8_lossy(&message.payload)
                .parse::<usize>()
                .unwrap(),
        );
    }
    // Their PUBACKs let the link delete exactly those rows, and no other.
    let at_broker = std::sync::Arc::new(at_broker);
    let deleted = wait_until("the acknowledged rows deleted", DEADLINE, || {
        let spool = spool.clone();
        let at_broker = at_broker.clone();
        async move {
            let left: std::collections::BTreeSet<usize> = spool
                .call(|c| outbox::pending(c, ROWS))
                .await?
                .into_iter()
                .map(|p| {
                    String::from_utf8(p.message.payload)
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect();
            let deleted: Vec<usize> = (0..ROWS).filter(|n| !left.contains(n)).collect();
            let wrong: Vec<usize> = deleted
                .iter()
                .copied()
                .filter(|n| !at_broker.contains(n))
                .collect();
            anyhow::ensure!(
                wrong.is_empty(),
                "rows deleted although their message never reached the broker: {wrong:?}"
            );
            Ok((deleted.len() == DELIVERED).then_some(deleted))
        }
    })
    .await;
    link.shutdown();
    let left = outbox_len(&spool).await;
    let deleted = deleted.unwrap_or_else(|e| {
        panic!(
            "{e:#}: {} rows deleted for the {DELIVERED} the broker received and acknowledged",
            ROWS as i64 - left
        )
    });
    assert_eq!(
        deleted
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        *at_broker
    );
}
