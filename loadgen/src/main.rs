//! `loadgen`: measures a gateway node over real WebSockets (protocol v1, JSON).
//!
//! Scenarios so far: `idle` (open many connections and hold them; reports the connect rate,
//! handshake latency and, with `--pid`, the server's RSS per connection) and `latency`
//! (subscribers on one channel, publishers at a fixed rate; reports publish-to-deliver
//! percentiles and audits every offset for gaps, duplicates and reorders).

mod client;
mod report;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Command line.
#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load generator for the gateway (protocol v1)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// Options every scenario shares.
#[derive(clap::Args, Clone)]
struct Target {
    /// WebSocket URL of the node.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// HS256 secret to mint tokens with (the node's --jwt-secret).
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    secret: String,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open N connections at a target rate and hold them.
    Idle {
        #[command(flatten)]
        target: Target,
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Target connects per second.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        /// Seconds to hold them once all are open.
        #[arg(long, default_value_t = 5)]
        hold: u64,
        /// Gateway pid, to report its RSS per connection.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Publish at a fixed rate to subscribers of one channel and measure delivery latency.
    Latency {
        #[command(flatten)]
        target: Target,
        /// Subscribers on the channel.
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// Publishes per second (one publisher).
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Seconds to publish for.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Channel name.
        #[arg(long, default_value = "room:bench")]
        channel: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        match cli.scenario {
            Scenario::Idle {
                target,
                connections,
                rate,
                hold,
                pid,
            } => report::idle(&target.url, &target.secret, connections, rate, hold, pid).await,
            Scenario::Latency {
                target,
                subscribers,
                rate,
                duration,
                channel,
            } => {
                report::latency(
                    &target.url,
                    &target.secret,
                    subscribers,
                    rate,
                    duration,
                    &channel,
                )
                .await
            }
        }
    })
}
