//! The packet gate between rumqttc and the broker: a local socket the MQTT client connects
//! to, relayed to the broker (over TLS when configured), that cuts a PUBLISH too large for
//! the client before anyone reads it.
//!
//! ```text
//! rumqttc ──unix socket──▶ relay ──TCP / TLS──▶ broker
//!         ◀── packets as sent, except a PUBLISH over `limit`: same header, topic and
//!             packet id, empty payload (the payload is read off the socket and dropped)
//! ```
//!
//! Why: rumqttc refuses an incoming packet over its maximum size by dropping the connection
//! without reading it, and a broker redelivers an unacknowledged QoS 1 message on every
//! reconnect, so one oversized command (a bug in the line's `meta`) would cut the station
//! off for good. Cut to its header here, the message reaches the agent like any other: it is
//! acknowledged (the broker stops redelivering it) and answered `bad_request`. Its size is
//! recorded in [`Cuts`], where the link finds it by topic and packet id.
//!
//! Only the broker-to-client direction is parsed (MQTT 3.1.1 fixed header, remaining length,
//! and a PUBLISH's topic and packet id); the client-to-broker direction is copied as is. The
//! socket lives in a fresh directory only this user can enter, removed when the relay stops.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::tokio_rustls::{TlsConnector, rustls};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// A PUBLISH the relay cut: its topic, packet id and the size of the payload it dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cut {
    topic: String,
    pkid: u16,
    payload_bytes: usize,
}

/// The messages cut and not yet claimed by the link, oldest first.
#[derive(Debug, Clone, Default)]
pub(super) struct Cuts(Arc<Mutex<VecDeque<Cut>>>);

impl Cuts {
    fn record(&self, cut: Cut) {
        self.lock().push_back(cut);
    }

    /// The dropped payload's size if `publish` is a message the relay cut (it then has an
    /// empty payload, and its topic and packet id are the ones recorded).
    pub(super) fn take(&self, publish: &rumqttc::Publish) -> Option<usize> {
        if !publish.payload.is_empty() {
            return None;
        }
        let mut cuts = self.lock();
        let at = cuts
            .iter()
            .position(|c| c.pkid == publish.pkid && c.topic == publish.topic)?;
        cuts.remove(at).map(|c| c.payload_bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Cut>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where the broker is.
#[derive(Debug, Clone)]
pub(super) struct Upstream {
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// The relay's socket directory; removed with everything in it when dropped.
#[derive(Debug)]
struct SocketDir(PathBuf);

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bound relay: [`Relay::socket`] is the path for rumqttc (`Transport::Unix`).
#[derive(Debug)]
pub(super) struct Relay {
    dir: SocketDir,
    listener: UnixListener,
}

impl Relay {
    /// Binds the socket in a new private directory under the temporary directory
    /// (`PrivateTmp=yes` under systemd).
    pub(super) fn bind() -> io::Result<Relay> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "capture-agent-link-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let dir = SocketDir(dir);
        let listener = UnixListener::bind(dir.0.join("mqtt.sock"))?;
        Ok(Relay { dir, listener })
    }

    pub(super) fn socket(&self) -> PathBuf {
        self.dir.0.join("mqtt.sock")
    }

    /// Serves every connection the client makes, until the task is aborted.
    pub(super) async fn serve(self, upstream: Upstream, limit: usize, cuts: Cuts) {
        let Relay { dir, listener } = self;
        let _dir = dir;
        let reported = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            match listener.accept().await {
                Ok((client, _)) => {
                    let upstream = upstream.clone();
                    let cuts = cuts.clone();
                    let reported = reported.clone();
                    tokio::spawn(async move {
                        relay(client, &upstream, limit, &cuts, &reported).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the MQTT relay cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// One client connection: dial the broker, then relay both ways until either side closes.
async fn relay(
    client: UnixStream,
    upstream: &Upstream,
    limit: usize,
    cuts: &Cuts,
    reported: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering;
    let broker = match tokio::time::timeout(Duration::from_secs(10), dial(upstream)).await {
        Ok(Ok(broker)) => {
            reported.store(false, Ordering::Relaxed);
            broker
        }
        Ok(Err(e)) => {
            if !reported.swap(true, Ordering::Relaxed) {
                tracing::warn!(host = %upstream.host, port = upstream.port, error = %e, "cannot reach the MQTT broker");
            }
            return;
        }
        Err(_) => {
            if !reported.swap(true, Ordering::Relaxed) {
                tracing::warn!(host = %upstream.host, port = upstream.port, "the MQTT broker did not answer within 10 s");
            }
            return;
        }
    };
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (from_broker, mut to_broker) = tokio::io::split(broker);
    // Either direction ending ends the connection: the broker then sees the drop (and
    // publishes the last will) exactly when rumqttc's connection drops, and the other way
    // round.
    tokio::select! {
        _ = tokio::io::copy(&mut from_client, &mut to_broker) => {}
        result = forward_from_broker(BufReader::with_capacity(64 << 10, from_broker), &mut to_client, limit, cuts) => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "the MQTT relay's broker side ended");
            }
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

async fn dial(upstream: &Upstream) -> io::Result<Box<dyn Stream>> {
    let tcp = TcpStream::connect((upstream.host.as_str(), upstream.port)).await?;
    tcp.set_nodelay(true)?;
    match &upstream.tls {
        None => Ok(Box::new(tcp)),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(upstream.host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await?;
            Ok(Box::new(tls))
        }
    }
}

/// The MQTT packet type of a PUBLISH (high nibble of the first byte).
const PUBLISH: u8 = 3;

/// Copies packets from the broker to the client, cutting every PUBLISH whose remaining
/// length is over `limit` (the client's maximum incoming packet size) to its header.
async fn forward_from_broker<R, W>(
    mut from: R,
    to: &mut W,
    limit: usize,
    cuts: &Cuts,
) -> io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let first = match from.read_u8().await {
            Ok(byte) => byte,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let remaining = read_remaining_length(&mut from).await?;
        if first >> 4 == PUBLISH && remaining > limit {
            let stub = cut_publish(first, remaining, &mut from, cuts, limit).await?;
            to.write_all(&stub).await?;
        } else {
            let mut header = vec![first];
            encode_remaining_length(remaining, &mut header);
            to.write_all(&header).await?;
            let copied = tokio::io::copy_buf(&mut (&mut from).take(remaining as u64), to).await?;
            if copied != remaining as u64 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        to.flush().await?;
    }
}

/// Reads a PUBLISH's variable header, drops its payload, records the cut and returns the
/// packet to hand over instead: the same first byte, topic and packet id, no payload.
async fn cut_publish<R>(
    first: u8,
    remaining: usize,
    from: &mut R,
    cuts: &Cuts,
    limit: usize,
) -> io::Result<Vec<u8>>
where
    R: AsyncBufRead + Unpin,
{
    let qos = (first >> 1) & 0b11;
    let topic_len = usize::from(from.read_u16().await?);
    let mut topic = vec![0; topic_len];
    from.read_exact(&mut topic).await?;
    let pkid = if qos > 0 { from.read_u16().await? } else { 0 };
    let header_len = 2 + topic_len + if qos > 0 { 2 } else { 0 };
    let payload_bytes = remaining.checked_sub(header_len).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "PUBLISH shorter than its header",
        )
    })?;
    let dropped =
        tokio::io::copy_buf(&mut from.take(payload_bytes as u64), &mut tokio::io::sink()).await?;
    if dropped != payload_bytes as u64 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let topic_text = String::from_utf8_lossy(&topic).into_owned();
    tracing::warn!(topic = %topic_text, pkid, packet_bytes = remaining, limit, "an incoming message is over the MQTT packet limit: dropped unread, handed on empty to be acknowledged and refused");
    cuts.record(Cut {
        topic: topic_text,
        pkid,
        payload_bytes,
    });
    let mut stub = vec![first];
    encode_remaining_length(header_len, &mut stub);
    stub.extend_from_slice(&(topic_len as u16).to_be_bytes());
    stub.extend_from_slice(&topic);
    if qos > 0 {
        stub.extend_from_slice(&pkid.to_be_bytes());
    }
    Ok(stub)
}

/// MQTT's variable-length integer: 7 bits a byte, at most four bytes.
async fn read_remaining_length<R: AsyncRead + Unpin>(from: &mut R) -> io::Result<usize> {
    let mut value = 0usize;
    for shift in [0, 7, 14, 21] {
        let byte = from.read_u8().await?;
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "MQTT remaining length over four bytes",
    ))
}

fn encode_remaining_length(mut value: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish_packet(qos: u8, topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        body.extend_from_slice(payload);
        let mut packet = vec![0x30 | (qos << 1)];
        encode_remaining_length(body.len(), &mut packet);
        packet.extend_from_slice(&body);
        packet
    }

    async fn forward(input: Vec<u8>, limit: usize, cuts: &Cuts) -> Vec<u8> {
        let mut out = Vec::new();
        forward_from_broker(BufReader::new(&input[..]), &mut out, limit, cuts)
            .await
            .unwrap();
        out
    }

    #[tokio::test]
    async fn small_packets_pass_unchanged_and_a_large_publish_is_cut_to_its_header() {
        let cuts = Cuts::default();
        let small = publish_packet(1, "cap/t/station/s/cmd", 7, b"{\"op\":\"ping\"}");
        let large = publish_packet(1, "cap/t/station/s/cmd", 8, &vec![b'x'; 300_000]);
        let ping_resp = vec![0xd0, 0x00];
        let input = [small.clone(), large, ping_resp.clone(), small.clone()].concat();
        let out = forward(input, 1000, &cuts).await;
        let stub = publish_packet(1, "cap/t/station/s/cmd", 8, b"");
        assert_eq!(out, [small.clone(), stub, ping_resp, small].concat());
        let received = rumqttc::Publish {
            dup: false,
            qos: rumqttc::QoS::AtLeastOnce,
            retain: false,
            topic: "cap/t/station/s/cmd".into(),
            pkid: 8,
            payload: Default::default(),
        };
        assert_eq!(cuts.take(&received), Some(300_000));
        assert_eq!(cuts.take(&received), None, "claimed once");
    }

    #[tokio::test]
    async fn a_qos0_publish_is_cut_too_and_a_truncated_stream_is_an_error() {
        let cuts = Cuts::default();
        let large = publish_packet(0, "a/b", 0, &vec![b'x'; 5000]);
        let out = forward(large.clone(), 100, &cuts).await;
        assert_eq!(out, publish_packet(0, "a/b", 0, b""));
        let mut out = Vec::new();
        let cut_short = &large[..large.len() - 1];
        let result =
            forward_from_broker(BufReader::new(cut_short), &mut out, 100, &Cuts::default()).await;
        assert!(result.is_err());
    }

    #[test]
    fn remaining_lengths_round_trip() {
        for value in [
            0,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut bytes = Vec::new();
            encode_remaining_length(value, &mut bytes);
            let decoded = futures::executor::block_on(read_remaining_length(&mut &bytes[..]));
            assert_eq!(decoded.unwrap(), value);
        }
    }
}
