//! `loadgen`: the connection-flood and latency load generator for the gateway.
//!
//! Scenarios: `flood` (open N connections at a rate and hold them), `chat` (users in rooms
//! publishing), `broadcast` (publishers to many subscribers of one channel), `churn` (chat
//! while other connections come and go) and `bigroom` (one big room with presence). It mints its own tokens (or reads them from a file),
//! speaks protocol v1 in JSON or MessagePack (or the same objects as socket.io events, for
//! the peers in `bench/`), spreads connections over worker processes and source addresses,
//! measures delivery latency from a send timestamp in each payload, audits every offset, and
//! reports a table, a JSON file and an exit code for scripts.

mod cli;
mod coordinator;
mod report;
mod server;
mod stats;
mod wire;
mod worker;

use clap::Parser;
use std::process::ExitCode;

/// Exit code of a run that completed but missed `--max-p99-ms` or `--max-errors`.
const THRESHOLDS_MISSED: u8 = 3;

fn main() -> anyhow::Result<ExitCode> {
    let cli = cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ok = runtime.block_on(coordinator::main(cli));
    // A blocking stdin read may still be parked on a thread: do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    let ok = ok?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        // Distinct from 1 (the run itself failed), so that scripts can tell the two apart.
        ExitCode::from(THRESHOLDS_MISSED)
    })
}
