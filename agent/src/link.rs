//! The MQTT link: the agent's one connection to the broker.
//!
//! ```text
//!              ┌──────────── event loop task (only polls; never awaits the client) ─────────┐
//! broker ◀────▶│ ConnAck ─▶ connected watch      Publish ─▶ inbound channel ─▶ daemon        │
//!              │ Outgoing::Publish(pkid) ─▶ pkid↔seq    PubAck(pkid) ─▶ acked channel         │
//!              └────────────────────────────────────────────────────────────────────────────┘
//!              ┌──────────── publisher task ────────────────────────────────────────────────┐
//! spool outbox │ on ConnAck: subscribe, retained `online`; republish all when the broker    │
//!   ─────────▶ │ lost the session; on flush: publish new outbox rows (QoS 1);                │
//!              │ on PubAck: delete the row                                                   │
//!              └────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Guarantees:
//! - **Outgoing, at least once.** Every message the agent must send is in the spool's outbox
//!   first ([`crate::spool::outbox`]); a row is deleted only after the broker's PUBACK. rumqttc
//!   keeps unacknowledged publishes in memory and drops them when the broker reports no
//!   session, and a crash loses them anyway: the outbox is what is left to send.
//! - **Incoming, acknowledged after the inbox commit.** Manual acks: a command reaches the
//!   daemon as a [`Publish`] and is acknowledged with [`LinkHandle::ack`] only once it is in
//!   the spool's inbox. A crash before that makes the broker redeliver it
//!   (`clean_session = false`, the client id is the device id).
//! - **Subscriptions on every ConnAck**, since a broker that lost the session lost them too.
//! - **Presence**: a retained `online` status after every ConnAck, a retained `offline` last
//!   will for when the connection dies without a goodbye.
//! - **The event loop is never blocked**: it only polls and hands events over through
//!   unbounded channels (bounded in practice by the broker's in-flight window); errors are
//!   followed by a bounded exponential back-off before the next reconnect attempt.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet,
    Publish, QoS, Request,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::spool::{Spool, outbox};

mod relay;

/// The largest incoming MQTT packet the agent reads (its remaining length: everything after
/// the fixed header). A PUBLISH over it is cut by the [`relay`] before anyone reads it and
/// handed on with an empty payload; [`LinkHandle::unread_payload`] tells its size. Brokers
/// should refuse packets well above it (provisioning writes `max_packet_size 1048576`).
pub const MAX_INCOMING_PACKET_BYTES: usize = 128 << 10;
/// The largest packet the agent sends.
const MAX_OUTGOING_PACKET_BYTES: usize = 128 << 10;

/// The first wait before reconnecting to the broker; doubled per failed attempt, at most
/// [`RECONNECT_MAX`], back to the first on every ConnAck.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// How to reach the broker and what to say on connect.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub host: String,
    pub port: u16,
    /// The device id: the broker keeps this client's session between connections.
    pub client_id: String,
    pub keep_alive: Duration,
    pub credentials: Option<(String, String)>,
    pub tls: Option<rumqttc::TlsConfiguration>,
    /// Subscribed (QoS 1) after every ConnAck.
    pub subscriptions: Vec<String>,
    /// Retained message published after every ConnAck (`online` status): topic, payload.
    /// [`LinkHandle::set_presence`] replaces the payload while the link runs.
    pub online: (String, Vec<u8>),
    /// Retained last will (`offline` status): topic, payload.
    pub offline: (String, Vec<u8>),
}

/// Bookkeeping shared by the two tasks: which outbox rows are with rumqttc, under which
/// packet id.
///
/// rumqttc tells which packet id a publish got (`Outgoing::Publish(pkid)`) but not which
/// request it was: the link relies on the order. The publisher hands requests over one at a
/// time, under this lock (`try_publish`), so `awaiting_pkid` is in the order rumqttc sends
/// them, and the next first-time publish always belongs to its front. What rumqttc may drop
/// breaks that order unless it is taken out here too: on a connection error rumqttc moves
/// what it held and what was in its request channel to its `pending` queue, and clears that
/// queue when the next broker has no session. Requests handed over after the error are still
/// in the channel and are sent in the new session. So at every error the poll task counts
/// the requests of `awaiting_pkid` now in `pending` (its front), and at a ConnAck without
/// session it forgets exactly those and every packet id: their rows go back to the outbox's
/// to-send list, the others keep their place.
#[derive(Debug, Default)]
struct InFlight {
    /// Outbox rows handed to the client, in the order they were handed over; the next
    /// first-time `Outgoing::Publish` belongs to the front one.
    awaiting_pkid: VecDeque<i64>,
    by_pkid: HashMap<u16, i64>,
    /// Every row with the client (with or without packet id yet), not to be handed twice.
    rows: HashSet<i64>,
    /// How many of the front of `awaiting_pkid` sat in rumqttc's `pending` queue at the last
    /// connection error: lost if the broker comes back without the session.
    in_pending: usize,
}

impl InFlight {
    /// After a connection error: counts the handed-over requests now in rumqttc's `pending`
    /// queue. A publish whose packet id the link never saw (its event was still buffered) is
    /// one of them: its event is dropped, and the publish counts as not sent.
    fn note_connection_lost(&mut self, eventloop: &mut EventLoop) {
        eventloop
            .state
            .events
            .retain(|event| !matches!(event, Event::Outgoing(Outgoing::Publish(_))));
        self.in_pending = eventloop
            .pending
            .iter()
            .filter(|request| match request {
                Request::Publish(publish) => {
                    publish.qos != QoS::AtMostOnce && !self.by_pkid.contains_key(&publish.pkid)
                }
                _ => false,
            })
            .count()
            .min(self.awaiting_pkid.len());
    }

    /// After a ConnAck: when the broker has no session, rumqttc dropped its `pending` queue,
    /// and the packet ids of the old session mean nothing. Those rows are sent again from the
    /// outbox; the requests handed over since the error stay in line.
    fn on_connack(&mut self, session_present: bool) {
        if !session_present {
            let lost: Vec<i64> = self
                .awaiting_pkid
                .drain(..self.in_pending)
                .chain(self.by_pkid.drain().map(|(_, seq)| seq))
                .collect();
            for seq in lost {
                self.rows.remove(&seq);
            }
        }
        self.in_pending = 0;
    }
}

/// Handle to a running link.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    client: AsyncClient,
    flush: Arc<Notify>,
    connected: watch::Receiver<bool>,
    presence: Arc<Mutex<Presence>>,
    in_flight: Arc<Mutex<InFlight>>,
    /// Incoming messages the relay cut for being over [`MAX_INCOMING_PACKET_BYTES`].
    cuts: relay::Cuts,
}

/// The current retained presence payload, and whether it changed since it was last sent.
#[derive(Debug)]
struct Presence {
    payload: Vec<u8>,
    changed: bool,
}

/// The running link's tasks; dropping this does not stop them, [`Link::shutdown`] does.
#[derive(Debug)]
pub struct Link {
    handle: LinkHandle,
    tasks: Vec<JoinHandle<()>>,
}

impl Link {
    /// Starts the link. Incoming publishes (commands, confirmations) arrive on `inbound`.
    pub fn start(
        settings: LinkSettings,
        spool: Spool,
        inbound: mpsc::UnboundedSender<Publish>,
    ) -> Link {
        let cuts = relay::Cuts::default();
        let mut tasks = Vec::new();
        let mut options = match relay_for(&settings) {
            Some((relay, upstream)) => {
                let options =
                    MqttOptions::new(&settings.client_id, relay.socket().display().to_string(), 0);
                tasks.push(tokio::spawn(relay.serve(
                    upstream,
                    MAX_INCOMING_PACKET_BYTES,
                    cuts.clone(),
                )));
                let mut options = options;
                options.set_transport(rumqttc::Transport::Unix);
                options
            }
            None => {
                let mut options =
                    MqttOptions::new(&settings.client_id, &settings.host, settings.port);
                if let Some(tls) = &settings.tls {
                    options.set_transport(rumqttc::Transport::tls_with_config(tls.clone()));
                }
                options
            }
        };
        options
            .set_keep_alive(settings.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(MAX_INCOMING_PACKET_BYTES, MAX_OUTGOING_PACKET_BYTES)
            .set_last_will(LastWill::new(
                &settings.offline.0,
                settings.offline.1.clone(),
                QoS::AtLeastOnce,
                true,
            ));
        if let Some((user, password)) = &settings.credentials {
            options.set_credentials(user, password);
        }
        let (client, eventloop) = AsyncClient::new(options, 64);
        let (connected_tx, connected) = watch::channel(false);
        let (session_tx, session_rx) = mpsc::unbounded_channel();
        let (acked_tx, acked_rx) = mpsc::unbounded_channel();
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        let flush = Arc::new(Notify::new());
        let presence = Arc::new(Mutex::new(Presence {
            payload: settings.online.1.clone(),
            changed: false,
        }));
        let handle = LinkHandle {
            client: client.clone(),
            flush: flush.clone(),
            connected,
            presence: presence.clone(),
            in_flight: in_flight.clone(),
            cuts,
        };
        let poller = tokio::spawn(poll(
            eventloop,
            settings.subscriptions.len(),
            inbound,
            connected_tx,
            session_tx,
            acked_tx,
            in_flight.clone(),
        ));
        let publisher = tokio::spawn(publish(
            client, settings, spool, flush, presence, session_rx, acked_rx, in_flight,
        ));
        tasks.extend([poller, publisher]);
        Link { handle, tasks }
    }

    pub fn handle(&self) -> LinkHandle {
        self.handle.clone()
    }

    /// Stops both tasks without a DISCONNECT: the broker sees the connection drop and
    /// publishes the last will, as it would after a crash. For a clean goodbye call
    /// [`LinkHandle::disconnect`] first.
    pub fn shutdown(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

impl LinkHandle {
    /// Acknowledges an incoming publish; call only after it is durable in the spool.
    pub async fn ack(&self, publish: &Publish) -> Result<(), rumqttc::ClientError> {
        self.client.ack(publish).await
    }

    /// The size of the payload `publish` had, when it was over the packet limit and was
    /// dropped unread (the publish then arrives with an empty payload). Answers once per
    /// delivery.
    pub fn unread_payload(&self, publish: &Publish) -> Option<usize> {
        self.cuts.take(publish)
    }

    /// Asks the publisher to send what the outbox holds now (after a spool commit).
    pub fn flush(&self) {
        self.flush.notify_one();
    }

    /// Replaces the retained presence message (the station status): published at once when
    /// connected and again after every ConnAck. Not durable on purpose: it is a snapshot of
    /// the present, and the next one supersedes it.
    pub fn set_presence(&self, payload: Vec<u8>) {
        {
            let mut presence = self
                .presence
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            presence.payload = payload;
            presence.changed = true;
        }
        self.flush.notify_one();
    }

    /// How many outbox rows (and presence messages) are with the MQTT client, waiting for
    /// their PUBACK.
    pub fn in_flight(&self) -> usize {
        lock(&self.in_flight).rows.len()
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Waits until the link is connected and subscribed (or the link stopped).
    pub async fn connected(&mut self) {
        let _ = self.connected.wait_for(|up| *up).await;
    }

    /// A clean goodbye: the broker does not publish the last will.
    pub async fn disconnect(&self) -> Result<(), rumqttc::ClientError> {
        self.client.disconnect().await
    }
}

/// The relay the client connects through, bound, and where it relays to. None (the client
/// then connects to the broker itself, and an oversized packet drops the connection) when
/// the socket cannot be made or the TLS configuration is not a rustls one.
fn relay_for(settings: &LinkSettings) -> Option<(relay::Relay, relay::Upstream)> {
    let tls = match &settings.tls {
        None => None,
        Some(rumqttc::TlsConfiguration::Rustls(config)) => Some(config.clone()),
        Some(_) => {
            tracing::warn!(
                "TLS not configured through rustls: connecting without the packet relay"
            );
            return None;
        }
    };
    match relay::Relay::bind() {
        Ok(relay) => Some((
            relay,
            relay::Upstream {
                host: settings.host.clone(),
                port: settings.port,
                tls,
            },
        )),
        Err(e) => {
            tracing::error!(error = %e, "cannot make the MQTT relay's socket: connecting without it; a message over the packet limit will drop the connection");
            None
        }
    }
}

/// The event loop task: polls, and hands every event to whoever needs it.
async fn poll(
    mut eventloop: EventLoop,
    subscriptions: usize,
    inbound: mpsc::UnboundedSender<Publish>,
    connected: watch::Sender<bool>,
    sessions: mpsc::UnboundedSender<bool>,
    acked: mpsc::UnboundedSender<i64>,
    in_flight: Arc<Mutex<InFlight>>,
) {
    let mut backoff = Backoff::exact(RECONNECT_FIRST, RECONNECT_MAX).retries();
    // SUBACKs still expected since the last ConnAck: the link counts as connected (ready for
    // commands) only once its subscriptions are in place.
    let mut subacks_due = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                backoff.reset();
                tracing::info!(session_present = connack.session_present, "mqtt connected");
                // Without a session rumqttc dropped what it still held: the outbox sends it
                // again.
                lock(&in_flight).on_connack(connack.session_present);
                subacks_due = subscriptions;
                if subacks_due == 0 {
                    connected.send_replace(true);
                }
                let _ = sessions.send(connack.session_present);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) if subacks_due > 0 => {
                subacks_due -= 1;
                if subacks_due == 0 {
                    connected.send_replace(true);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let _ = inbound.send(publish);
            }
            Ok(Event::Incoming(Packet::PubAck(puback))) => {
                if let Some(seq) = lock(&in_flight).by_pkid.remove(&puback.pkid) {
                    let _ = acked.send(seq);
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                let mut state = lock(&in_flight);
                // A packet id already known is a retransmission after a reconnect.
                if !state.by_pkid.contains_key(&pkid)
                    && let Some(seq) = state.awaiting_pkid.pop_front()
                {
                    state.by_pkid.insert(pkid, seq);
                }
            }
            Ok(_) => {}
            Err(error) => {
                lock(&in_flight).note_connection_lost(&mut eventloop);
                if connected.send_replace(false) {
                    tracing::warn!(error = %error, "mqtt connection lost; reconnecting");
                } else if !matches!(error, ConnectionError::Io(_)) {
                    tracing::debug!(error = %error, "mqtt reconnect failed");
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// The publisher task: subscriptions and presence on connect, the outbox whenever there is
/// something to send, deletion of what the broker acknowledged.
#[allow(clippy::too_many_arguments)]
async fn publish(
    client: AsyncClient,
    settings: LinkSettings,
    spool: Spool,
    flush: Arc<Notify>,
    presence: Arc<Mutex<Presence>>,
    mut sessions: mpsc::UnboundedReceiver<bool>,
    mut acked: mpsc::UnboundedReceiver<i64>,
    in_flight: Arc<Mutex<InFlight>>,
) {
    let mut connected = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            session = sessions.recv() => {
                let Some(_) = session else { return };
                connected = on_connect(&client, &settings, &presence, &in_flight).await;
            }
            seq = acked.recv() => {
                let Some(seq) = seq else { return };
                if seq == PRESENCE {
                    continue;
                }
                lock(&in_flight).rows.remove(&seq);
                if let Err(e) = spool.call(move |c| outbox::remove(c, seq)).await {
                    tracing::error!(error = %e, seq, "cannot delete an acknowledged outbox row");
                }
                continue;
            }
            _ = flush.notified() => {}
            _ = tick.tick() => {}
        }
        if connected
            && let Some(payload) = changed_presence(&presence)
            && !hand_over(
                &client,
                &in_flight,
                PRESENCE,
                &settings.online.0,
                true,
                payload,
            )
        {
            // The client's queue is full: the next round sends the status.
            mark_presence_changed(&presence);
        }
        if connected && let Err(e) = send_outbox(&client, &spool, &in_flight).await {
            tracing::warn!(error = %e, "publishing the outbox");
        }
    }
}

/// The stand-in outbox sequence number of the `online` status, which is not in the outbox.
const PRESENCE: i64 = -1;

/// The presence payload if it changed since it was last published.
fn changed_presence(presence: &Mutex<Presence>) -> Option<Vec<u8>> {
    let mut presence = presence
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let changed = std::mem::replace(&mut presence.changed, false);
    changed.then(|| presence.payload.clone())
}

async fn on_connect(
    client: &AsyncClient,
    settings: &LinkSettings,
    presence: &Mutex<Presence>,
    in_flight: &Arc<Mutex<InFlight>>,
) -> bool {
    for topic in &settings.subscriptions {
        if let Err(e) = client.subscribe(topic, QoS::AtLeastOnce).await {
            tracing::warn!(error = %e, %topic, "subscribing");
            return false;
        }
    }
    let payload = {
        let mut presence = presence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        presence.changed = false;
        presence.payload.clone()
    };
    // Its packet id must not be taken for an outbox row's.
    if !hand_over(
        client,
        in_flight,
        PRESENCE,
        &settings.online.0,
        true,
        payload,
    ) {
        mark_presence_changed(presence);
    }
    true
}

fn mark_presence_changed(presence: &Mutex<Presence>) {
    presence
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .changed = true;
}

/// Hands one QoS 1 publish to the client and records whose it is, in one step under the
/// lock (see [`InFlight`]). False when the client's request queue is full (the broker is
/// away or slow): the row stays in the outbox's to-send list for the next round.
fn hand_over(
    client: &AsyncClient,
    in_flight: &Mutex<InFlight>,
    seq: i64,
    topic: &str,
    retain: bool,
    payload: Vec<u8>,
) -> bool {
    let mut state = lock(in_flight);
    if seq != PRESENCE && state.rows.contains(&seq) {
        return true;
    }
    match client.try_publish(topic, QoS::AtLeastOnce, retain, payload) {
        Ok(()) => {
            state.awaiting_pkid.push_back(seq);
            if seq != PRESENCE {
                state.rows.insert(seq);
            }
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, seq, "the MQTT client's queue is full; sending later");
            false
        }
    }
}

/// Hands every outbox row not yet with the client to it, oldest first, as far as the
/// client's request queue takes them.
async fn send_outbox(
    client: &AsyncClient,
    spool: &Spool,
    in_flight: &Arc<Mutex<InFlight>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let pending = spool.call(|c| outbox::pending(c, 256)).await?;
    for row in pending {
        let message = row.message;
        if !hand_over(
            client,
            in_flight,
            row.seq,
            &message.topic,
            message.retain,
            message.payload,
        ) {
            break;
        }
    }
    Ok(())
}

fn lock(in_flight: &Mutex<InFlight>) -> std::sync::MutexGuard<'_, InFlight> {
    in_flight
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
