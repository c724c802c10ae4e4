//! One worker's share of a scenario: its connections, their publishing and reading, and the
//! counts it reports. A worker runs in the coordinator's process or in a child process.

use crate::cli::Scenario;
use crate::stats::{Audit, Stats};
use crate::wire::{Connection, Dialer, Incoming, connect_cause, mint};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Mutex, watch};

/// How long subscribers keep reading after publishing stops.
const DRAIN: Duration = Duration::from_secs(3);
/// How often a connection task hands its counts to the worker.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Where a worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    /// Opening connections.
    Connect,
    /// Connected and subscribed, waiting for the common start.
    Ready,
    /// Publishing (or holding, for flood).
    Run,
    /// Reading what is still in flight.
    Drain,
    /// Finished.
    Done,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Connect,
            1 => Phase::Ready,
            2 => Phase::Run,
            3 => Phase::Drain,
            _ => Phase::Done,
        }
    }
}

/// Tokens for users: minted from a secret, or read from a file.
#[derive(Clone)]
pub enum Tokens {
    /// Mint HS256 tokens.
    Secret(String),
    /// Use these, round-robin.
    List(Arc<Vec<String>>),
}

impl Tokens {
    /// From the command line options.
    pub fn new(secret: Option<&str>, file: Option<&Path>) -> anyhow::Result<Tokens> {
        match (file, secret) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading tokens from {}", path.display()))?;
                let list: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect();
                anyhow::ensure!(!list.is_empty(), "{} holds no token", path.display());
                Ok(Tokens::List(Arc::new(list)))
            }
            (None, Some(secret)) => Ok(Tokens::Secret(secret.to_owned())),
            (None, None) => anyhow::bail!("give --secret (or GATEWAY_JWT_SECRET) or --tokens FILE"),
        }
    }

    /// The token of user `name` (number `n`).
    pub fn token(&self, name: &str, n: usize) -> anyhow::Result<String> {
        match self {
            Tokens::Secret(secret) => mint(secret, name),
            Tokens::List(list) => Ok(list[n % list.len()].clone()),
        }
    }
}

/// Live state of a worker, read by the progress reporter.
pub struct Shared {
    /// Counts flushed by connection tasks (histograms included).
    pub stats: Mutex<Stats>,
    phase: AtomicU8,
    /// Connections currently open.
    pub open: AtomicUsize,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            stats: Mutex::new(Stats::default()),
            phase: AtomicU8::new(0),
            open: AtomicUsize::new(0),
        })
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }
}

/// A worker's share of the run.
#[derive(Clone)]
pub struct Worker {
    /// This worker's number.
    pub index: usize,
    /// Workers in the run.
    pub count: usize,
    /// How to connect.
    pub dialer: Dialer,
    /// Tokens.
    pub tokens: Tokens,
    /// Live counts.
    pub shared: Arc<Shared>,
    /// The common start time (Unix ms) of the measured phase, set by the coordinator once
    /// every worker is ready.
    pub start: watch::Receiver<Option<u64>>,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What a member connection does once subscribed.
#[derive(Clone)]
struct Role {
    channel: String,
    /// A broadcast publisher (connects to `--publisher-url` nodes when given).
    publisher: bool,
    /// Publishes per second, with how many recipients each.
    publish: Option<(f64, u64)>,
    /// Padding bytes per message.
    payload: usize,
    /// `join_leave` to subscribe with, if any.
    join_leave: Option<String>,
}

impl Worker {
    /// A worker with its own live state.
    pub fn new(
        index: usize,
        count: usize,
        dialer: Dialer,
        tokens: Tokens,
        start: watch::Receiver<Option<u64>>,
    ) -> Worker {
        Worker {
            index,
            count,
            dialer,
            tokens,
            shared: Shared::new(),
            start,
        }
    }

    /// Waits for the coordinator's start time and returns it on this clock.
    async fn common_start(&self) -> Instant {
        let mut start = self.start.clone();
        let at_ms = loop {
            if let Some(ms) = *start.borrow() {
                break ms;
            }
            if start.changed().await.is_err() {
                break 0;
            }
        };
        let now_ms = now_nanos() / 1_000_000;
        Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms))
    }

    /// The global numbers in `0..n` this worker handles.
    fn mine(&self, n: usize) -> impl Iterator<Item = usize> + use<> {
        (self.index..n).step_by(self.count.max(1))
    }

    async fn connect(
        &self,
        name: &str,
        n: usize,
        publisher: bool,
        local: &mut Stats,
    ) -> Option<Connection> {
        let started = Instant::now();
        let token = match self.tokens.token(name, n) {
            Ok(t) => t,
            Err(_) => {
                local.error("token");
                return None;
            }
        };
        match self.dialer.connect(n, name, &token, publisher).await {
            Ok(conn) => {
                let _ = local.handshake.record(started.elapsed().as_nanos() as u64);
                local.connected += 1;
                self.shared.open.fetch_add(1, Ordering::Relaxed);
                Some(conn)
            }
            Err(e) => {
                local.error(connect_cause(&e));
                None
            }
        }
    }

    async fn flush(&self, local: &mut Stats) {
        let taken = local.take();
        self.shared.stats.lock().await.merge(&taken);
    }

    /// Runs `scenario`'s share; returns the final counts.
    pub async fn run(&self, scenario: &Scenario) -> Stats {
        match scenario.clone() {
            Scenario::Flood {
                connections,
                rate,
                hold,
            } => self.flood(connections, rate, hold).await,
            Scenario::Chat {
                users,
                room_size,
                rate,
                duration,
                payload,
                channel_prefix,
            } => {
                let members = self.chat_members(users, room_size, rate, payload, &channel_prefix);
                self.members(members, duration, None).await
            }
            Scenario::Broadcast {
                subscribers,
                publishers,
                rate,
                duration,
                payload,
            } => {
                let channel = "bench:broadcast".to_string();
                let mut members: Vec<(String, usize, Role)> = self
                    .mine(subscribers)
                    .map(|i| {
                        let role = Role {
                            channel: channel.clone(),
                            publisher: false,
                            publish: None,
                            payload,
                            join_leave: None,
                        };
                        (format!("lg-sub{i}"), i, role)
                    })
                    .collect();
                for p in self.mine(publishers) {
                    let role = Role {
                        channel: channel.clone(),
                        publisher: true,
                        // Publishers are subscribed too, and get their own messages.
                        publish: Some((rate, (subscribers + publishers) as u64)),
                        payload,
                        join_leave: None,
                    };
                    members.push((format!("lg-pub{p}"), subscribers + p, role));
                }
                self.members(members, duration, None).await
            }
            Scenario::Churn {
                measured,
                room_size,
                rate,
                churn_rate,
                duration,
                channel_prefix,
            } => {
                let members = self.chat_members(measured, room_size, rate, 0, &channel_prefix);
                let rooms = measured.div_ceil(room_size.max(1));
                let churn = (churn_rate as f64 / self.count as f64, rooms, channel_prefix);
                self.members(members, duration, Some(churn)).await
            }
            Scenario::Bigroom {
                members,
                channel,
                join_leave,
                hold,
            } => {
                let join_leave = (join_leave != "default").then_some(join_leave);
                let members = self
                    .mine(members)
                    .map(|i| {
                        let role = Role {
                            channel: channel.clone(),
                            publisher: false,
                            publish: None,
                            payload: 0,
                            join_leave: join_leave.clone(),
                        };
                        (format!("lg-member{i}"), i, role)
                    })
                    .collect();
                self.members(members, hold, None).await
            }
        }
        self.shared.set_phase(Phase::Done);
        let mut stats = self.shared.stats.lock().await;
        stats.take()
    }

    fn chat_members(
        &self,
        users: usize,
        room_size: usize,
        rate: f64,
        payload: usize,
        prefix: &str,
    ) -> Vec<(String, usize, Role)> {
        let room_size = room_size.max(1);
        self.mine(users)
            .map(|u| {
                let room = u / room_size;
                let in_room = (users - room * room_size).min(room_size) as u64;
                let role = Role {
                    channel: format!("{prefix}lg{room}"),
                    publisher: false,
                    publish: (rate > 0.0).then_some((rate, in_room)),
                    payload,
                    join_leave: None,
                };
                (format!("lg-user{u}"), u, role)
            })
            .collect()
    }

    async fn flood(&self, connections: usize, rate: u32, hold: u64) {
        let mine: Vec<usize> = self.mine(connections).collect();
        let rate = (f64::from(rate.max(1)) / self.count as f64).max(0.001);
        let (stop_tx, stop_rx) = watch::channel(false);
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(mine.len());
        for (k, n) in mine.into_iter().enumerate() {
            tokio::time::sleep_until((started + Duration::from_secs_f64(k as f64 / rate)).into())
                .await;
            let worker = self.clone();
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                // The counts (two histograms, tens of KiB) live only while connecting: an
                // idle connection holds its socket and nothing else.
                let conn = {
                    let mut local = Stats::default();
                    let conn = worker.connect(&format!("lg-idle{n}"), n, false, &mut local).await;
                    worker.flush(&mut local).await;
                    conn
                };
                let Some(mut conn) = conn else { return };
                let mut cause = None;
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        frame = conn.next() => match frame {
                            Ok(Incoming::Frame(_) | Incoming::Message(_)) => {}
                            Ok(Incoming::Closed(code)) => { cause = Some(format!("close_{code}")); break; }
                            Err(_) => { cause = Some("read_error".to_string()); break; }
                        }
                    }
                }
                worker.shared.open.fetch_sub(1, Ordering::Relaxed);
                if let Some(cause) = cause {
                    let mut local = Stats::default();
                    local.error(cause);
                    worker.flush(&mut local).await;
                }
                conn.close().await;
            }));
        }
        // Hold once every connect finished (or failed).
        loop {
            let s = self.shared.stats.lock().await;
            let attempted = s.connected
                + s.errors
                    .iter()
                    .filter(|(k, _)| k.starts_with("connect") || *k == "token")
                    .map(|(_, v)| v)
                    .sum::<u64>();
            drop(s);
            if attempted >= tasks.len() as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.shared.set_phase(Phase::Run);
        tokio::time::sleep(Duration::from_secs(hold)).await;
        self.shared.set_phase(Phase::Drain);
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Connects and subscribes every member, then publishes for `duration` seconds (all
    /// members start together), drains, and closes. With `churn`, other connections come and
    /// go meanwhile.
    async fn members(
        &self,
        members: Vec<(String, usize, Role)>,
        duration: u64,
        churn: Option<(f64, usize, String)>,
    ) {
        let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
        let ready = Arc::new(AtomicUsize::new(0));
        let total = members.len();
        let mut tasks = Vec::with_capacity(total);
        for (name, n, role) in members {
            let worker = self.clone();
            let (start_rx, ready) = (start_rx.clone(), ready.clone());
            tasks.push(tokio::spawn(async move {
                worker
                    .member(name, n, role, start_rx, ready, duration)
                    .await;
            }));
            // Pace connects a little so the server's accept queue is not the test.
            if tasks.len() % 200 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        while ready.load(Ordering::Relaxed) < total {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.shared.set_phase(Phase::Ready);
        let run_start = self.common_start().await;
        tokio::time::sleep_until(run_start.into()).await;
        self.shared.set_phase(Phase::Run);
        let _ = start_tx.send(Some(run_start));
        let churner = churn.map(|(rate, rooms, prefix)| {
            let worker = self.clone();
            tokio::spawn(async move { worker.churn(rate, rooms, &prefix, duration).await })
        });
        tokio::time::sleep_until((run_start + Duration::from_secs(duration)).into()).await;
        self.shared.set_phase(Phase::Drain);
        if let Some(c) = churner {
            let _ = c.await;
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn member(
        &self,
        name: String,
        n: usize,
        role: Role,
        mut start: watch::Receiver<Option<Instant>>,
        ready: Arc<AtomicUsize>,
        duration: u64,
    ) {
        let mut local = Stats::default();
        let conn = self.connect(&name, n, role.publisher, &mut local).await;
        let mut subscribed = None;
        let mut conn = match conn {
            Some(mut conn) => {
                let mut subscribe = json!({"op": "subscribe", "channel": role.channel});
                if let Some(mode) = &role.join_leave {
                    subscribe["join_leave"] = json!(mode);
                }
                match conn.request(subscribe).await {
                    Ok(ok) => subscribed = Some(ok["offset"].as_u64().unwrap_or(0)),
                    Err(_) => local.error("subscribe_failed"),
                }
                Some(conn)
            }
            None => None,
        };
        ready.fetch_add(1, Ordering::Relaxed);
        self.flush(&mut local).await;
        let (Some(c), Some(offset)) = (conn.as_mut(), subscribed) else {
            if let Some(c) = conn {
                c.close().await;
            }
            return;
        };
        let mut audit = Audit::after(offset);
        // Wait for the common start, reading meanwhile (pings, presence).
        let run_start = loop {
            if let Some(at) = *start.borrow() {
                break at;
            }
            tokio::select! {
                _ = start.changed() => {}
                frame = c.next() => if self.on_frame(frame, &role, &mut audit, &mut local) { break Instant::now(); }
            }
        };
        let run_end = run_start + Duration::from_secs(duration);
        let drain_end = run_end + DRAIN;
        let padding = "x".repeat(role.payload);
        let mut publish_at = role.publish.map(|(rate, _)| {
            // Spread the first publishes over one interval.
            let interval = 1.0 / rate.max(0.001);
            run_start + Duration::from_secs_f64(rand::random::<f64>() * interval)
        });
        let mut last_flush = Instant::now();
        loop {
            let next_publish = publish_at.filter(|at| *at < run_end);
            let wake = next_publish.unwrap_or(drain_end).min(drain_end);
            tokio::select! {
                frame = c.next() => {
                    if self.on_frame(frame, &role, &mut audit, &mut local) {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    if Instant::now() >= drain_end {
                        break;
                    }
                    if let (Some(at), Some((rate, recipients))) = (next_publish, role.publish) {
                        let id = c.id();
                        let cmd = json!({"id": id, "op": "publish", "channel": role.channel,
                            "data": {"t": now_nanos(), "p": padding}});
                        if c.send(&cmd).await.is_err() {
                            local.error("send_error");
                            break;
                        }
                        local.sent += 1;
                        local.expected += recipients;
                        publish_at = Some(at + Duration::from_secs_f64(1.0 / rate));
                    }
                }
            }
            if last_flush.elapsed() >= FLUSH_EVERY {
                self.flush(&mut local).await;
                last_flush = Instant::now();
            }
        }
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        self.flush(&mut local).await;
        if let Some(c) = conn {
            c.close().await;
        }
    }

    /// Handles one frame; true when the connection is over.
    fn on_frame(
        &self,
        frame: anyhow::Result<Incoming>,
        role: &Role,
        audit: &mut Audit,
        local: &mut Stats,
    ) -> bool {
        match frame {
            Ok(Incoming::Message(m)) => {
                if m.channel == role.channel {
                    local.received += 1;
                    if let Some(t) = m.sent_ns {
                        let _ = local.latency.record(now_nanos().saturating_sub(t).max(1));
                    }
                    audit.see(m.offset, local);
                }
                false
            }
            Ok(Incoming::Frame(f)) => {
                if let Some(code) = f.get("error").and_then(|e| e["code"].as_str()) {
                    local.error(format!("error_{code}"));
                }
                false
            }
            Ok(Incoming::Closed(code)) => {
                local.error(format!("close_{code}"));
                true
            }
            Err(_) => {
                local.error("read_error");
                true
            }
        }
    }

    /// Connections that come and go at `rate` per second for `duration` seconds.
    async fn churn(&self, rate: f64, rooms: usize, prefix: &str, duration: u64) {
        let started = Instant::now();
        let end = started + Duration::from_secs(duration);
        let mut k = 0usize;
        let mut tasks = Vec::new();
        while Instant::now() < end {
            tokio::time::sleep_until(
                (started + Duration::from_secs_f64(k as f64 / rate.max(0.001))).into(),
            )
            .await;
            let n = 1_000_000 + self.index + k * self.count;
            k += 1;
            let worker = self.clone();
            let channel = format!("{prefix}lg{}", n % rooms.max(1));
            tasks.push(tokio::spawn(async move {
                let mut local = Stats::default();
                if let Some(mut conn) = worker
                    .connect(&format!("lg-churn{n}"), n, false, &mut local)
                    .await
                {
                    if conn
                        .request(json!({"op": "subscribe", "channel": channel}))
                        .await
                        .is_err()
                    {
                        local.error("churn_subscribe_failed");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    worker.shared.open.fetch_sub(1, Ordering::Relaxed);
                    conn.close().await;
                }
                // Churners' handshakes are not the measured set's: keep only their errors.
                local.connected = 0;
                local.handshake.reset();
                worker.flush(&mut local).await;
            }));
            tasks.retain(|t| !t.is_finished());
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Encoding, Protocol};

    fn worker(index: usize, count: usize) -> Worker {
        let dialer = Dialer {
            urls: vec!["ws://127.0.0.1:1/ws".into()],
            publisher_urls: Vec::new(),
            protocol: Protocol::V1,
            encoding: Encoding::Json,
            source: None,
            route: None,
        };
        let (_tx, rx) = watch::channel(None);
        Worker::new(index, count, dialer, Tokens::Secret("s".into()), rx)
    }

    #[test]
    fn workers_split_users_without_overlap() {
        let mut all: Vec<usize> = (0..3)
            .flat_map(|i| worker(i, 3).mine(10).collect::<Vec<_>>())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn chat_rooms_count_their_recipients() {
        let members = worker(0, 1).chat_members(25, 10, 1.0, 0, "room:");
        let last = members.last().unwrap();
        assert_eq!(last.2.channel, "room:lg2");
        assert_eq!(last.2.publish.unwrap().1, 5, "the last room holds 5 users");
        assert_eq!(members[0].2.publish.unwrap().1, 10);
    }

    #[test]
    fn tokens_come_from_a_file_round_robin() {
        let path = std::env::temp_dir().join(format!("lg-tokens-{}", std::process::id()));
        std::fs::write(&path, "a\n\nb\n").unwrap();
        let tokens = Tokens::new(None, Some(&path)).unwrap();
        assert_eq!(tokens.token("x", 0).unwrap(), "a");
        assert_eq!(tokens.token("x", 3).unwrap(), "b");
        std::fs::remove_file(&path).unwrap();
        assert!(Tokens::new(None, None).is_err());
    }
}
