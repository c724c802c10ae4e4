//! `gateway`: runs one node.

use anyhow::Context;
use gateway::config::{Config, Settings};
use gateway::hub::Hub;
use gateway::node::Node;
use gateway::{backends, http, metrics, server, tls, workers};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use tracing_subscriber::EnvFilter;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Targets that log whole WebSocket frames at trace level (tokens in `refresh` included):
/// capped at debug, whatever `--log` says.
const FRAME_LOGGERS: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

fn init_logging(config: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::filter::LevelFilter;
    let mut filter = EnvFilter::try_new(&config.log_filter)
        .with_context(|| format!("bad log filter {:?}", config.log_filter))?;
    // Only when something is at trace: a cap added at a lower level would raise it. A
    // directive for the same target added later replaces the user's.
    if filter.max_level_hint() == Some(LevelFilter::TRACE) {
        for target in FRAME_LOGGERS {
            filter = filter.add_directive(format!("{target}=debug").parse()?);
        }
    }
    // Colours only for a person at a terminal, never into a file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Exit code of a configuration error (clap uses the same for bad flags).
const CONFIG_ERROR: u8 = 2;

/// `error` and its causes on one line: a cause that spans lines (a parser drawing the input
/// with a caret under it) has them joined with `; `.
fn one_line(error: &anyhow::Error) -> String {
    format!("{error:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs the node. Start-up errors print one line, the cause chain included and never a
/// backtrace: exit code 2 for the configuration, 1 for the rest.
fn main() -> ExitCode {
    let config = match Settings::load().and_then(Config::from_settings) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gateway: configuration error: {}", one_line(&e));
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("gateway: configuration error: {}", one_line(&e));
        return ExitCode::from(CONFIG_ERROR);
    }
    // The certificate and key are read before anything starts: a missing file or a key that
    // is not the certificate's is a configuration error.
    let tls = match config.tls.as_ref().map(tls::Tls::load).transpose() {
        Ok(tls) => tls.map(Arc::new),
        Err(e) => {
            eprintln!("gateway: configuration error: --tls-cert/--tls-key: {e}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    // Worker 0 is this thread; `server::serve` starts the others (see `workers`).
    let worker_count = config
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    workers::install(worker_count);
    let runtime = match workers::runtime(0) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gateway: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, tls, worker_count)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway stopped");
            eprintln!("gateway: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(
    config: Config,
    tls: Option<Arc<tls::Tls>>,
    worker_count: usize,
) -> anyhow::Result<()> {
    let prometheus = metrics::install()?;
    let listeners = server::bind(&config.listen, worker_count)
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listeners[0].local_addr()?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}/ws"));
    if config.dev {
        tracing::warn!(
            "dev mode: POST /dev/token mints tokens for anyone; never use in production"
        );
        if config.generated_api_key {
            // Dev mode only: printed so that a local tour can call the API.
            let key = config.api_key.as_deref().unwrap_or_default();
            tracing::warn!("dev API key: {key}");
        }
    }
    let stop = server::shutdown_signal().context("installing signal handlers")?;
    tls::reload_on_sighup(tls.clone()).context("installing the SIGHUP handler")?;
    let hub = Arc::new(Hub::new(&config.node_id));
    let (backends, changes) = backends::connect(&config, hub.clone()).await?;
    let mode = if config.redis.is_some() {
        "clustered"
    } else {
        "embedded"
    };
    let node = Node::new(config, public_url, Some(prometheus), hub, backends)?;
    node.announce_changes(changes).await;
    node.registry.heartbeat(node.info()).await?;
    node.spawn_background();
    tracing::info!(
        addr = %addr,
        node = %node.config.node_id,
        mode,
        workers = worker_count,
        tls = tls.is_some(),
        "listening"
    );
    let router = http::router(node.clone());
    server::serve(node, listeners, router, tls, stop)
        .await
        .context("starting a worker")
}
