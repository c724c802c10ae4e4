//! The command line.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Load generator for the gateway (protocol v1), and for peers speaking its subset.
#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen", version)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Options every scenario shares.
    #[command(flatten)]
    pub common: Common,
}

/// Wire framing of the target server.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The gateway's protocol v1 over plain WebSocket frames.
    V1,
    /// The same JSON objects carried as socket.io events (`cmd` out, `msg` in).
    Socketio,
    /// Centrifugo's client protocol, JSON (the gateway's `/connection/websocket`, or a
    /// Centrifugo server): the token goes in the first command, `connect`.
    Centrifugo,
    /// The same over HTTP-streaming (`/connection/http_stream`): replies and pushes as JSON
    /// lines of a chunked response, commands by `POST /emulation` on a second connection.
    CentrifugoHttpStream,
}

/// Wire encoding (protocol v1 only).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `v1.json` text frames.
    Json,
    /// `v1.msgpack` binary frames.
    Msgpack,
}

/// Options every scenario shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// WebSocket URL of a node; repeat for several nodes (connections go round-robin).
    #[arg(long = "url", global = true, default_value = "ws://127.0.0.1:8080/ws")]
    pub urls: Vec<String>,
    /// Broadcast: the publishers connect to these nodes (repeat for several) instead of
    /// `--url`, so that every delivery crosses nodes (clustered mode).
    #[arg(long = "publisher-url", global = true)]
    pub publisher_urls: Vec<String>,
    /// Ask this node's `/v1/route` (an http:// base URL) for each user's home node instead.
    #[arg(long, global = true)]
    pub route: Option<String>,
    /// HS256 secret to mint tokens with (the node's --jwt-secret).
    #[arg(
        long,
        global = true,
        env = "GATEWAY_JWT_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
    /// File with one token per line, used round-robin instead of minting.
    #[arg(long, global = true)]
    pub tokens: Option<PathBuf>,
    /// Framing of the target.
    #[arg(long, global = true, value_enum, default_value_t = Protocol::V1)]
    pub protocol: Protocol,
    /// Encoding (protocol v1).
    #[arg(long, global = true, value_enum, default_value_t = Encoding::Json)]
    pub encoding: Encoding,
    /// Worker processes; 0 picks one per 19,000 connections.
    #[arg(long, global = true, default_value_t = 0)]
    pub workers: usize,
    /// Spread connections over source addresses 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, global = true, default_value_t = 1)]
    pub source_addrs: u8,
    /// Server pid(s), to report RSS and CPU.
    #[arg(long = "pid", global = true)]
    pub pids: Vec<u32>,
    /// Write the report as JSON to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Exit with code 3 when the p99 latency (ms) is above this (1 means the run failed).
    #[arg(long, global = true)]
    pub max_p99_ms: Option<f64>,
    /// Exit with code 3 when errors (including gaps, duplicates, reorders) are above this.
    #[arg(long, global = true)]
    pub max_errors: Option<u64>,
    /// No live progress display.
    #[arg(long, global = true)]
    pub no_progress: bool,
}

/// What to measure.
#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// Open N connections at rate R and hold them for T seconds.
    Flood {
        /// Connections.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Target connects per second (all workers together).
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        /// Seconds to hold once open.
        #[arg(long, default_value_t = 5)]
        hold: u64,
    },
    /// N users in rooms of K, each publishing r messages per second.
    Chat {
        /// Users.
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Users per room.
        #[arg(long, default_value_t = 20)]
        room_size: usize,
        /// Messages per second per user.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Payload bytes (padding) per message.
        #[arg(long, default_value_t = 0)]
        payload: usize,
        /// Room channels are `<prefix>lg<n>`: `room:` has presence on by default, `bench:`
        /// (granted by minted tokens) has none, like the peers.
        #[arg(long, default_value = "room:")]
        channel_prefix: String,
    },
    /// P publishers, M subscribers on one channel.
    Broadcast {
        /// Subscribers.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Publishers.
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Messages per second per publisher.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Payload bytes (padding) per message.
        #[arg(long, default_value_t = 0)]
        payload: usize,
    },
    /// Chat among a measured set while other connections come and go.
    Churn {
        /// Measured users.
        #[arg(long, default_value_t = 200)]
        measured: usize,
        /// Users per room.
        #[arg(long, default_value_t = 20)]
        room_size: usize,
        /// Messages per second per measured user.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Connects (each followed by a disconnect about a second later) per second.
        #[arg(long, default_value_t = 100)]
        churn_rate: u32,
        /// Seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Room channels are `<prefix>lg<n>` (see `chat`).
        #[arg(long, default_value = "room:")]
        channel_prefix: String,
    },
    /// N members join one channel (a presence room, or not), then stay for T seconds:
    /// connects/s and server CPU per connect, presence announcements included.
    Bigroom {
        /// Members.
        #[arg(long, default_value_t = 5000)]
        members: usize,
        /// The channel (`room:` has presence; `bench:` has none).
        #[arg(long, default_value = "room:bigroom")]
        channel: String,
        /// How members hear of each other: `diff`, `each`, `off`, or `default` (send no
        /// `join_leave`: the namespace's default).
        #[arg(long, default_value = "diff")]
        join_leave: String,
        /// Seconds to stay once everyone joined.
        #[arg(long, default_value_t = 3)]
        hold: u64,
    },
}

impl Scenario {
    /// Name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Flood { .. } => "flood",
            Scenario::Chat { .. } => "chat",
            Scenario::Broadcast { .. } => "broadcast",
            Scenario::Churn { .. } => "churn",
            Scenario::Bigroom { .. } => "bigroom",
        }
    }

    /// Connections the scenario opens at its peak.
    pub fn connections(&self) -> usize {
        match self {
            Scenario::Flood { connections, .. } => *connections,
            Scenario::Chat { users, .. } => *users,
            Scenario::Broadcast {
                subscribers,
                publishers,
                ..
            } => subscribers + publishers,
            Scenario::Churn {
                measured,
                churn_rate,
                ..
            } => measured + *churn_rate as usize * 2,
            Scenario::Bigroom { members, .. } => *members,
        }
    }
}
