//! The whole capture system on one machine, for end-to-end tests.
//!
//! [`System::start`] runs every real part: Mosquitto, Garage, PostgreSQL (a database on the
//! shared server, or a private server a test may restart), RabbitMQ (shared, or a private node
//! a test may stop), `cloud-ingest` and `capture-agent` with two `videotestsrc` cameras, as
//! real processes. The test plays the warehouse line through [`System::command`] and friends;
//! the core business system is a durable queue bound to the ingest's exchange.
//!
//! Everything either side sees goes into a [`Ledger`]: the clips the station announced (in
//! replies and `recording_started` events), the station's `clip_failed` events and every
//! CloudEvent the core system received, with its event id. [`System::settle`] waits until
//! every announced clip has an outcome, and [`System::audit`] checks the guarantee the system
//! exists to give: every clip that was recorded and not aborted ends with exactly one
//! completion event id (redeliveries of that id are allowed, a second id is not) whose size
//! and sha256 match an object that exists, or with an explicit failure event; an aborted clip
//! has neither an event nor an object.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::fixtures::{
    Agent, AgentOptions, AmqpNames, CoreSystem, Garage, Ingest, IngestOptions, Mosquitto,
    MqttClient, PgDatabase, PgServer, RabbitMq, StoreOptions, unique_name,
};

/// The deployment environment of every system started here.
pub const ENV: &str = "test";
/// The one station, with cameras [`CAMERAS`].
pub const STATION: &str = "pack-01";
pub const CAMERAS: [&str; 2] = ["top", "side"];

const CMD: &str = "cap/test/station/pack-01/cmd";
const REPLY: &str = "cap/test/station/pack-01/reply";
const EVENT: &str = "cap/test/station/pack-01/event";
const STATUS: &str = "cap/test/station/pack-01/status";

/// How long a reply may take when every part is up.
pub const REPLY_WAIT: Duration = Duration::from_secs(40);

/// What a scenario needs beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct SystemOptions {
    /// A PostgreSQL server of the test's own (to restart), instead of a database on the
    /// shared one.
    pub private_postgres: bool,
    /// A RabbitMQ node of the test's own (to stop), instead of names on the shared one.
    pub private_rabbitmq: bool,
    /// Extra lines for the agent's `[agent]` table.
    pub agent_extra: String,
    /// Extra lines for the agent's `[store]` table (`retry_max = "5s"`,
    /// `confirm_timeout = "2s"` and `confirm_timeout_max = "5s"` are always there: a
    /// notification lost on its way to the ingest is sent again within seconds).
    pub store_extra: String,
    /// The agent's `disk.max_bytes`, when not the default.
    pub max_bytes: Option<String>,
    /// Extra TOML at the end of the agent's configuration (e.g. a `[scanner]` table).
    pub extra_toml: String,
}

/// The catalog's PostgreSQL.
#[derive(Debug)]
pub enum Catalog {
    Shared(PgDatabase),
    Private(PgServer),
}

impl Catalog {
    pub fn url(&self) -> String {
        match self {
            Catalog::Shared(db) => db.url().to_owned(),
            Catalog::Private(server) => server.url(),
        }
    }

    /// The private server, for fault injection.
    pub fn server(&mut self) -> Result<&mut PgServer> {
        match self {
            Catalog::Private(server) => Ok(server),
            Catalog::Shared(_) => bail!("this system uses the shared PostgreSQL"),
        }
    }
}

pub use crate::fixtures::Station;

/// Every part of the system but the station, running: what [`System::with_station`] needs
/// to become a [`System`] once a station is started against it.
#[derive(Debug)]
pub struct Cloud {
    pub broker: Mosquitto,
    pub garage: Garage,
    pub catalog: Catalog,
    pub rabbit: RabbitMq,
    pub ingest: Ingest,
    pub ingest_options: IngestOptions,
    names: AmqpNames,
    core: CoreSystem,
}

/// Every part of the system, running.
#[derive(Debug)]
pub struct System<S = Agent> {
    pub broker: Mosquitto,
    pub garage: Garage,
    pub catalog: Catalog,
    pub rabbit: RabbitMq,
    pub ingest: Ingest,
    pub agent: S,
    /// What the ingest was started with (to start another replica).
    pub ingest_options: IngestOptions,
    names: AmqpNames,
    core: Option<CoreSystem>,
    line: MqttClient,
    pub ledger: Ledger,
    commands: u64,
}

impl System {
    /// Starts every part and waits until the station reports online.
    pub async fn start(options: SystemOptions) -> Result<System> {
        let cloud = System::start_cloud(&options).await?;
        let store = cloud.garage.settings();
        let mut agent_options = AgentOptions::new(cloud.broker.host(), cloud.broker.port());
        agent_options.env = ENV.into();
        agent_options.station = STATION.into();
        agent_options.cameras = CAMERAS.iter().map(|c| (*c).to_owned()).collect();
        agent_options.agent_extra = options.agent_extra;
        agent_options.extra_toml = options.extra_toml;
        agent_options.store = StoreOptions {
            endpoint: cloud.garage.endpoint(),
            region: store.region.clone(),
            bucket: cloud.garage.bucket().into(),
            access_key_id: store.access_key_id.clone(),
            secret_access_key: store.secret_access_key.clone(),
        };
        agent_options.store_extra = format!(
            "retry_max = \"5s\"\nconfirm_timeout = \"2s\"\nconfirm_timeout_max = \"5s\"\n{}",
            options.store_extra
        );
        if let Some(max_bytes) = options.max_bytes {
            agent_options.max_bytes = max_bytes;
        }
        let agent = Agent::start(agent_options).await?;
        System::with_station(cloud, agent).await
    }

    /// Starts every part but the station: Mosquitto, Garage, the catalog, RabbitMQ with the
    /// core system's queue bound, and the ingest. `options.agent_extra`, `store_extra` and
    /// `max_bytes` are for the station, which the caller starts.
    pub async fn start_cloud(options: &SystemOptions) -> Result<Cloud> {
        let broker = Mosquitto::start().await?;
        let garage = Garage::start().await?;
        let catalog = if options.private_postgres {
            Catalog::Private(PgServer::start().await?)
        } else {
            Catalog::Shared(PgDatabase::create().await?)
        };
        let rabbit = if options.private_rabbitmq {
            RabbitMq::start().await?
        } else {
            RabbitMq::shared()
        };
        let names = rabbit.names();
        let core = CoreSystem::bind(&rabbit, names.clone()).await?;
        let ingest_options = IngestOptions {
            env: ENV.into(),
            client_id: unique_name("ingest"),
            mqtt_host: broker.host().into(),
            mqtt_port: broker.port(),
            store: garage.settings(),
            bucket: garage.bucket().into(),
            postgres_url: catalog.url(),
            amqp_url: rabbit.url().into(),
            exchange: names.exchange.clone(),
        };
        let ingest = Ingest::start(ingest_options.clone()).await?;
        Ok(Cloud {
            broker,
            garage,
            catalog,
            rabbit,
            ingest,
            ingest_options,
            names,
            core,
        })
    }
}

impl<S: Station> System<S> {
    /// The system of `cloud` with `station` (environment [`ENV`], station [`STATION`],
    /// cameras [`CAMERAS`]) started against it; waits until the station reports online.
    pub async fn with_station(cloud: Cloud, station: S) -> Result<System<S>> {
        let line = MqttClient::connect(
            cloud.broker.host(),
            cloud.broker.port(),
            "line",
            &[REPLY, EVENT],
        )
        .await?;
        let system = System {
            broker: cloud.broker,
            garage: cloud.garage,
            catalog: cloud.catalog,
            rabbit: cloud.rabbit,
            ingest: cloud.ingest,
            agent: station,
            ingest_options: cloud.ingest_options,
            names: cloud.names,
            core: Some(cloud.core),
            line,
            ledger: Ledger::default(),
            commands: 0,
        };
        system.wait_online(REPLY_WAIT).await?;
        Ok(system)
    }

    /// Starts another ingest replica beside [`System::ingest`], under its own MQTT client id
    /// (a member of the same shared subscription), and waits until it is subscribed.
    pub async fn start_replica(&self) -> Result<Ingest> {
        let mut options = self.ingest_options.clone();
        options.client_id = unique_name("ingest-replica");
        let replica = Ingest::start(options).await?;
        let deadline = Instant::now() + REPLY_WAIT;
        while !replica
            .metrics()
            .await
            .is_ok_and(|page| page.contains("ingest_up{dependency=\"mqtt\"} 1"))
        {
            ensure!(
                Instant::now() < deadline,
                "the replica did not subscribe within {REPLY_WAIT:?}:\n{}",
                replica.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(replica)
    }

    /// Waits for the station's retained status to say `online`.
    pub async fn wait_online(&self, timeout: Duration) -> Result<Value> {
        self.wait_status("the station online", timeout, |s| s["state"] == "online")
            .await
    }

    /// Waits for an `online` status the station made at `since` or later (by its clock,
    /// allowed to be up to 2 s behind this machine's): an `online` of an earlier run of the
    /// agent, still retained after a power cut, does not count.
    pub async fn wait_online_since(&self, since: SystemTime, timeout: Duration) -> Result<Value> {
        let since = since.duration_since(UNIX_EPOCH)?.as_secs_f64() - 2.0;
        self.wait_status("the station online again", timeout, |s| {
            s["state"] == "online"
                && s["at"]
                    .as_str()
                    .and_then(unix_seconds)
                    .is_some_and(|at| at >= since)
        })
        .await
    }

    async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let mut observer = MqttClient::connect(
            self.broker.host(),
            self.broker.port(),
            &unique_name("observer"),
            &[STATUS],
        )
        .await?;
        let status = observer.next_json(what, STATUS, timeout, wanted).await;
        observer.disconnect().await;
        status
    }

    /// A command for `order` with a fresh id.
    pub fn command_for(&mut self, op: &str, order: &str) -> Value {
        self.commands += 1;
        json!({"v": 1, "id": format!("{op}-{}", self.commands), "op": op, "order": order})
    }

    /// Publishes a command as the line does, without waiting for the reply.
    pub async fn send(&mut self, command: &Value) -> Result<()> {
        self.line.publish(CMD, command.to_string()).await
    }

    /// The reply to command `id`, waiting up to `timeout`; recorded in the ledger.
    pub async fn reply(&mut self, id: &Value, timeout: Duration) -> Result<Value> {
        let reply = self
            .line
            .next_json(&format!("the reply to {id}"), REPLY, timeout, |r| {
                &r["id"] == id
            })
            .await?;
        self.ledger.observe_reply(&reply);
        Ok(reply)
    }

    /// Sends a command and returns its reply.
    pub async fn command(&mut self, command: Value) -> Result<Value> {
        self.send(&command).await?;
        self.reply(&command["id"], REPLY_WAIT).await
    }

    /// `op` for `order`; fails unless the reply is ok.
    pub async fn ok(&mut self, op: &str, order: &str) -> Result<Value> {
        let command = self.command_for(op, order);
        let reply = self.command(command).await?;
        ensure!(reply["ok"] == true, "{op} {order} was refused: {reply}");
        Ok(reply)
    }

    /// Takes everything both sides received so far into the ledger; waits up to `wait` for
    /// the first CloudEvent. Reconnects the core system's consumer when its broker was away.
    pub async fn pump(&mut self, wait: Duration) -> Result<()> {
        for publish in self.line.drain(Duration::ZERO).await {
            if let Ok(message) = serde_json::from_slice::<Value>(&publish.payload) {
                if publish.topic == REPLY {
                    self.ledger.observe_reply(&message);
                } else if publish.topic == EVENT {
                    self.ledger.observe_station_event(&message);
                }
            }
        }
        if self.core.is_none() {
            match CoreSystem::bind(&self.rabbit, self.names.clone()).await {
                Ok(core) => self.core = Some(core),
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    return Ok(());
                }
            }
        }
        let core = self.core.as_mut().expect("bound above");
        let mut wait = wait;
        loop {
            match core.try_next_event(wait).await {
                Ok(Some((key, event))) => self.ledger.observe_cloud_event(&key, &event)?,
                Ok(None) => break,
                Err(_) => {
                    // The broker went away: bind again on the next pump.
                    self.core = None;
                    break;
                }
            }
            wait = Duration::from_millis(20);
        }
        Ok(())
    }

    /// Waits until every clip the station announced has an outcome (a completion, a
    /// rejection or a failure), then a little longer for redeliveries and stray events.
    pub async fn settle(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump(Duration::from_millis(500)).await?;
            let open = self.ledger.open_clips();
            if open.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "after {timeout:?} these clips have no outcome: {open:?}\nagent log tail:\n{}\ningest log tail:\n{}",
                    self.agent.log_tail(40),
                    self.ingest.log_tail(20)
                );
            }
        }
        let grace = Instant::now() + Duration::from_secs(3);
        while Instant::now() < grace {
            self.pump(Duration::from_millis(500)).await?;
        }
        Ok(())
    }

    /// Settles, checks every guarantee against the store and the station's spool, and
    /// returns the figures.
    pub async fn audit(&mut self, timeout: Duration) -> Result<Figures> {
        let deadline = Instant::now() + timeout;
        self.settle(timeout).await?;
        let objects = self.objects().await?;
        let mut figures = self.ledger.check(&objects)?;
        figures.accepted_on_station = self.settled_station(deadline).await?;
        Ok(figures)
    }

    /// Waits until the station's spool agrees with the ledger (every completed clip
    /// `accepted` there, every failed one `failed`, every aborted one `aborted`, nothing left
    /// waiting), up to `deadline`; returns how many clips the station holds as accepted.
    async fn settled_station(&mut self, deadline: Instant) -> Result<usize> {
        loop {
            self.pump(Duration::ZERO).await?;
            let spool = self.agent.spool_clips().await?;
            let problems = self.ledger.check_station(&spool);
            if problems.is_empty() {
                return Ok(spool.iter().filter(|c| c["state"] == "accepted").count());
            }
            if Instant::now() > deadline {
                bail!(
                    "the station's spool disagrees with what the cloud said ({} problem(s)):\n- {}\nagent log tail:\n{}",
                    problems.len(),
                    problems.join("\n- "),
                    self.agent.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Every object in the bucket: key → (size, sha256 of its bytes).
    async fn objects(&self) -> Result<BTreeMap<String, (u64, String)>> {
        use sha2::Digest;
        let client = self.garage.client();
        let mut objects = BTreeMap::new();
        let mut token = None;
        loop {
            let page = client
                .list_objects_v2()
                .bucket(self.garage.bucket())
                .set_continuation_token(token)
                .send()
                .await
                .context("listing the bucket")?;
            for object in page.contents() {
                let key = object.key().context("an object without a key")?.to_owned();
                let body = client
                    .get_object()
                    .bucket(self.garage.bucket())
                    .key(&key)
                    .send()
                    .await
                    .with_context(|| format!("reading {key}"))?
                    .body
                    .collect()
                    .await?
                    .into_bytes();
                let sha = hex::encode(sha2::Sha256::digest(&body));
                objects.insert(key, (body.len() as u64, sha));
            }
            token = page.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        Ok(objects)
    }
}

/// One clip the station announced.
#[derive(Debug, Default, Clone)]
pub struct ClipRecord {
    pub order: String,
    pub camera: Option<String>,
    pub aborted: bool,
    /// The station said `clip_uploaded` (the store holds it; the ingest may not know yet).
    pub uploaded: bool,
    /// The station said `clip_confirmed` (it holds the clip as accepted, and may evict it).
    pub confirmed: bool,
    /// `clip_failed` events from the station, with their reasons.
    pub failures: Vec<String>,
    /// `clip.completed` CloudEvents by event id: deliveries and the event's data.
    pub completed: BTreeMap<String, (u32, Value)>,
    /// `clip.rejected` CloudEvents by event id.
    pub rejected: BTreeMap<String, u32>,
}

/// What the line and the core system saw.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Orders the line started, and whether each was aborted.
    pub orders: BTreeMap<String, bool>,
    pub clips: BTreeMap<String, ClipRecord>,
    /// Faults the scenario injected (kills, stops, outages), for the figures.
    pub faults: u32,
    /// CloudEvents for clips the station never announced.
    pub unknown: Vec<Value>,
}

impl Ledger {
    fn clip(&mut self, clip_id: &str, order: &str) -> &mut ClipRecord {
        self.clips
            .entry(clip_id.to_owned())
            .or_insert_with(|| ClipRecord {
                order: order.to_owned(),
                ..ClipRecord::default()
            })
    }

    fn observe_reply(&mut self, reply: &Value) {
        if reply["ok"] != true {
            return;
        }
        let Some(order) = reply["order"].as_str() else {
            return;
        };
        match reply["op"].as_str() {
            Some("start" | "snapshot") => {
                self.orders.entry(order.to_owned()).or_insert(false);
                for clip in reply["clips"].as_array().into_iter().flatten() {
                    if let Some(clip) = clip.as_str() {
                        self.clip(clip, order);
                    }
                }
            }
            Some("abort") => {
                self.orders.insert(order.to_owned(), true);
                for clip in reply["clips"].as_array().into_iter().flatten() {
                    if let Some(clip) = clip.as_str() {
                        self.clip(clip, order).aborted = true;
                    }
                }
                for record in self.clips.values_mut() {
                    if record.order == order && record.completed.is_empty() {
                        record.aborted = true;
                    }
                }
            }
            _ => {}
        }
    }

    fn observe_station_event(&mut self, event: &Value) {
        let (Some(clip), Some(order)) = (event["clip_id"].as_str(), event["order"].as_str()) else {
            return;
        };
        let aborted = self.orders.get(order).copied().unwrap_or(false);
        let record = self.clip(clip, order);
        if let Some(camera) = event["camera"].as_str() {
            record.camera = Some(camera.to_owned());
        }
        if aborted && record.completed.is_empty() {
            record.aborted = true;
        }
        if event["event"] == "clip_uploaded" {
            record.uploaded = true;
        }
        if event["event"] == "clip_confirmed" {
            record.confirmed = true;
        }
        if event["event"] == "clip_failed" {
            record
                .failures
                .push(event["reason"].as_str().unwrap_or_default().to_owned());
        }
    }

    fn observe_cloud_event(&mut self, routing_key: &str, event: &Value) -> Result<()> {
        let id = event["id"]
            .as_str()
            .with_context(|| format!("a CloudEvent without an id: {event}"))?
            .to_owned();
        let data = &event["data"];
        let clip = data["clip_id"]
            .as_str()
            .with_context(|| format!("a CloudEvent without data.clip_id: {event}"))?;
        let Some(record) = self.clips.get_mut(clip) else {
            self.unknown.push(event.clone());
            return Ok(());
        };
        match routing_key {
            "clip.completed" => {
                record.completed.entry(id).or_insert((0, data.clone())).0 += 1;
            }
            "clip.rejected" => *record.rejected.entry(id).or_insert(0) += 1,
            other => bail!("an event with routing key {other}: {event}"),
        }
        Ok(())
    }

    /// Clips that are neither aborted nor have an outcome yet.
    pub fn open_clips(&self) -> Vec<String> {
        self.clips
            .iter()
            .filter(|(_, c)| {
                !c.aborted
                    && c.completed.is_empty()
                    && c.rejected.is_empty()
                    && c.failures.is_empty()
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// What the station's spool (`capture-agent spool --json --all`) says against the
    /// ledger, as problems: a clip the core system got must be `accepted` on the station (or
    /// evicted after its `clip_confirmed`), a failed one `failed`, an aborted one `aborted`
    /// (or gone); no clip may be left waiting.
    pub fn check_station(&self, spool: &[Value]) -> Vec<String> {
        let mut problems = Vec::new();
        let states: BTreeMap<&str, &str> = spool
            .iter()
            .filter_map(|c| Some((c["clip_id"].as_str()?, c["state"].as_str()?)))
            .collect();
        for (clip_id, clip) in &self.clips {
            let state = states.get(clip_id.as_str()).copied();
            let (wanted, absent_ok) = if clip.aborted {
                ("aborted", true)
            } else if !clip.completed.is_empty() {
                ("accepted", clip.confirmed)
            } else if !clip.failures.is_empty() || !clip.rejected.is_empty() {
                ("failed", false)
            } else {
                // No outcome in the cloud: the ledger's own check reports it.
                continue;
            };
            match state {
                Some(state) if state == wanted => {}
                None if absent_ok => {}
                Some(state) => problems.push(format!(
                    "clip {clip_id} of order {} is {state} on the station, not {wanted}",
                    clip.order
                )),
                None => problems.push(format!(
                    "clip {clip_id} of order {} is not in the station's spool (wanted {wanted})",
                    clip.order
                )),
            }
        }
        for (clip_id, state) in &states {
            if !matches!(*state, "accepted" | "failed" | "aborted")
                && !self.clips.contains_key(*clip_id)
            {
                problems.push(format!(
                    "clip {clip_id} is {state} on the station and nobody heard of it"
                ));
            }
        }
        problems
    }

    /// Checks every guarantee against the objects in the store.
    fn check(&self, objects: &BTreeMap<String, (u64, String)>) -> Result<Figures> {
        let mut problems = Vec::new();
        let mut figures = Figures {
            orders: self.orders.len(),
            faults: self.faults,
            ..Figures::default()
        };
        for event in &self.unknown {
            problems.push(format!("an event for a clip nobody started: {event}"));
        }
        for (clip_id, clip) in &self.clips {
            figures.clips += 1;
            let object_keys: Vec<&String> =
                objects.keys().filter(|k| k.contains(clip_id)).collect();
            if clip.aborted {
                figures.aborted += 1;
                if !clip.completed.is_empty() || !object_keys.is_empty() {
                    problems.push(format!(
                        "aborted clip {clip_id} has events {:?} or objects {object_keys:?}",
                        clip.completed.keys()
                    ));
                }
                continue;
            }
            if clip.completed.len() + clip.rejected.len() > 1 {
                figures.duplicates += clip.completed.len() + clip.rejected.len() - 1;
                problems.push(format!(
                    "clip {clip_id} has several event ids: completed {:?}, rejected {:?}",
                    clip.completed.keys(),
                    clip.rejected.keys()
                ));
            }
            figures.redeliveries += clip
                .completed
                .values()
                .map(|(n, _)| (*n - 1) as usize)
                .sum::<usize>();
            if let Some((_, data)) = clip.completed.values().next() {
                figures.completed += 1;
                if data["truncated"] == true {
                    figures.truncated += 1;
                }
                if let Err(problem) = check_completed(clip_id, clip, data, objects) {
                    problems.push(problem);
                }
            } else if !clip.rejected.is_empty() || !clip.failures.is_empty() {
                figures.failed += 1;
            } else {
                figures.lost += 1;
                problems.push(format!(
                    "clip {clip_id} of order {} has no outcome",
                    clip.order
                ));
            }
        }
        // Every order that was started and not aborted has a video clip from each camera.
        for (order, aborted) in &self.orders {
            if *aborted {
                continue;
            }
            for camera in CAMERAS {
                let has = self.clips.values().any(|c| {
                    &c.order == order
                        && (c.camera.as_deref() == Some(camera)
                            || c.completed.values().any(|(_, d)| d["camera"] == camera))
                });
                if !has {
                    problems.push(format!("order {order} has no clip from camera {camera}"));
                }
            }
        }
        if problems.is_empty() {
            Ok(figures)
        } else {
            bail!(
                "{} problem(s):\n- {}",
                problems.len(),
                problems.join("\n- ")
            )
        }
    }
}

fn check_completed(
    clip_id: &str,
    clip: &ClipRecord,
    data: &Value,
    objects: &BTreeMap<String, (u64, String)>,
) -> std::result::Result<(), String> {
    let key = data["key"].as_str().unwrap_or_default();
    let extension = if data["kind"] == "photo" {
        "jpg"
    } else {
        "mp4"
    };
    let expected_suffix = format!("/{}/{clip_id}.{extension}", clip.order);
    if !key.starts_with(&format!("{ENV}/")) || !key.ends_with(&expected_suffix) {
        return Err(format!(
            "clip {clip_id}: key {key:?} is not {ENV}/yyyy/mm/dd{expected_suffix}"
        ));
    }
    if data["order"] != clip.order.as_str() {
        return Err(format!(
            "clip {clip_id}: event order {} is not {}",
            data["order"], clip.order
        ));
    }
    let Some((size, sha)) = objects.get(key) else {
        return Err(format!(
            "clip {clip_id}: the event names {key}, which is not in the store"
        ));
    };
    if data["size"].as_u64() != Some(*size) || data["sha256"].as_str() != Some(sha.as_str()) {
        return Err(format!(
            "clip {clip_id}: the event says {} bytes sha256 {}, the object has {size} bytes sha256 {sha}",
            data["size"], data["sha256"]
        ));
    }
    Ok(())
}

/// What a scenario did and what it found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Figures {
    pub orders: usize,
    pub clips: usize,
    pub completed: usize,
    pub truncated: usize,
    pub failed: usize,
    pub aborted: usize,
    pub faults: u32,
    pub lost: usize,
    /// Clips with more than one event id (never allowed).
    pub duplicates: usize,
    /// Extra deliveries of an event id already received (at-least-once; allowed).
    pub redeliveries: usize,
    /// Clips the station's spool holds as `accepted` at the end (evicted ones not counted).
    pub accepted_on_station: usize,
}

impl Figures {
    pub fn to_json(&self, scenario: &str) -> Value {
        json!({
            "scenario": scenario,
            "orders": self.orders,
            "clips": self.clips,
            "completed": self.completed,
            "truncated": self.truncated,
            "failed": self.failed,
            "aborted": self.aborted,
            "faults": self.faults,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "redeliveries": self.redeliveries,
            "accepted_on_station": self.accepted_on_station,
        })
    }
}

/// Seconds since the Unix epoch of an RFC 3339 UTC timestamp as the protocol writes them
/// (`2026-11-23T10:00:47Z`, `2026-11-23T10:00:47.123Z`); `None` for anything else.
pub fn unix_seconds(timestamp: &str) -> Option<f64> {
    let (date, time) = timestamp.strip_suffix('Z')?.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let mut time = time.splitn(3, ':');
    let (hh, mm) = (
        time.next()?.parse::<i64>().ok()?,
        time.next()?.parse::<i64>().ok()?,
    );
    let ss = time.next()?.parse::<f64>().ok()?;
    // Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

/// The clips listed in a reply.
pub fn reply_clips(reply: &Value) -> Vec<String> {
    reply["clips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger_with_one_clip() -> Ledger {
        let mut ledger = Ledger::default();
        ledger.observe_reply(&json!({"ok": true, "op": "start", "order": "SO-1", "clips": ["C1"]}));
        ledger.observe_station_event(
            &json!({"event": "recording_started", "clip_id": "C1", "order": "SO-1", "camera": "top"}),
        );
        ledger
    }

    fn completed(id: &str) -> Value {
        json!({"id": id, "data": {"clip_id": "C1", "order": "SO-1", "camera": "top", "kind": "video",
            "key": "test/2026/11/24/SO-1/C1.mp4", "size": 3, "sha256": "abc"}})
    }

    #[test]
    fn protocol_timestamps_become_unix_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(unix_seconds("2026-11-23T10:00:47Z"), Some(1_795_428_047.0));
        assert_eq!(unix_seconds("2000-03-01T00:00:00.5Z"), Some(951_868_800.5));
        assert_eq!(unix_seconds("2026-11-23T10:00:47+01:00"), None);
        assert_eq!(unix_seconds("yesterday"), None);
    }

    #[test]
    fn the_audit_counts_a_redelivery_and_refuses_a_second_event_id() {
        let objects = BTreeMap::from([(
            "test/2026/11/24/SO-1/C1.mp4".to_owned(),
            (3, "abc".to_owned()),
        )]);
        let mut ledger = ledger_with_one_clip();
        assert!(ledger.open_clips() == ["C1"]);
        ledger
            .observe_cloud_event("clip.completed", &completed("E1"))
            .unwrap();
        ledger
            .observe_cloud_event("clip.completed", &completed("E1"))
            .unwrap();
        assert!(ledger.open_clips().is_empty());
        let figures = ledger.check(&objects);
        // One camera of two: the order is missing `side`.
        assert!(
            figures
                .unwrap_err()
                .to_string()
                .contains("no clip from camera side")
        );
        ledger.observe_station_event(
            &json!({"event": "clip_failed", "clip_id": "C2", "order": "SO-1", "camera": "side"}),
        );
        let figures = ledger.check(&objects).unwrap();
        assert_eq!(
            (figures.completed, figures.failed, figures.redeliveries),
            (1, 1, 1)
        );
        ledger
            .observe_cloud_event("clip.completed", &completed("E2"))
            .unwrap();
        assert!(
            ledger
                .check(&objects)
                .unwrap_err()
                .to_string()
                .contains("several event ids")
        );
    }

    #[test]
    fn the_audit_refuses_an_event_whose_object_differs_or_is_missing() {
        let mut ledger = ledger_with_one_clip();
        ledger.observe_station_event(
            &json!({"event": "clip_failed", "clip_id": "C2", "order": "SO-1", "camera": "side"}),
        );
        ledger
            .observe_cloud_event("clip.completed", &completed("E1"))
            .unwrap();
        let wrong = BTreeMap::from([(
            "test/2026/11/24/SO-1/C1.mp4".to_owned(),
            (3, "abd".to_owned()),
        )]);
        assert!(
            ledger
                .check(&wrong)
                .unwrap_err()
                .to_string()
                .contains("sha256")
        );
        assert!(
            ledger
                .check(&BTreeMap::new())
                .unwrap_err()
                .to_string()
                .contains("not in the store")
        );
    }

    #[test]
    fn the_station_check_wants_every_completed_clip_accepted_on_the_station() {
        let mut ledger = ledger_with_one_clip();
        ledger
            .observe_cloud_event("clip.completed", &completed("E1"))
            .unwrap();
        ledger.observe_station_event(
            &json!({"event": "clip_failed", "clip_id": "C2", "order": "SO-1", "camera": "side"}),
        );
        let spool = |c1: &str, c2: &str| {
            vec![
                json!({"clip_id": "C1", "state": c1}),
                json!({"clip_id": "C2", "state": c2}),
            ]
        };
        assert!(
            ledger
                .check_station(&spool("accepted", "failed"))
                .is_empty()
        );
        // The core system has the clip, the station still waits for its confirm.
        let problems = ledger.check_station(&spool("uploaded", "failed"));
        assert_eq!(
            problems,
            ["clip C1 of order SO-1 is uploaded on the station, not accepted"]
        );
        // Gone from the spool: fine only after the station said it was confirmed.
        let only_c2 = [json!({"clip_id": "C2", "state": "failed"})];
        assert_eq!(ledger.check_station(&only_c2).len(), 1);
        ledger.observe_station_event(
            &json!({"event": "clip_confirmed", "clip_id": "C1", "order": "SO-1", "camera": "top"}),
        );
        assert!(ledger.check_station(&only_c2).is_empty());
        // A clip nobody announced, still waiting on the station.
        let mut stray = spool("accepted", "failed");
        stray.push(json!({"clip_id": "C3", "state": "sealed"}));
        assert_eq!(
            ledger.check_station(&stray),
            ["clip C3 is sealed on the station and nobody heard of it"]
        );
    }

    #[test]
    fn the_audit_finds_a_lost_clip_and_an_object_of_an_aborted_one() {
        let mut ledger = ledger_with_one_clip();
        ledger.observe_station_event(
            &json!({"event": "recording_started", "clip_id": "C2", "order": "SO-1", "camera": "side"}),
        );
        let error = ledger.check(&BTreeMap::new()).unwrap_err().to_string();
        assert!(
            error.contains("clip C1 of order SO-1 has no outcome"),
            "{error}"
        );
        ledger.observe_reply(&json!({"ok": true, "op": "abort", "order": "SO-1"}));
        assert!(ledger.open_clips().is_empty());
        let stray = BTreeMap::from([(
            "test/2026/11/24/SO-1/C2.mp4".to_owned(),
            (3, "abc".to_owned()),
        )]);
        assert!(
            ledger
                .check(&stray)
                .unwrap_err()
                .to_string()
                .contains("aborted clip C2")
        );
        assert!(ledger.check(&BTreeMap::new()).is_ok());
    }
}
