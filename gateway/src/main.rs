//! `gateway`: runs one node.

use anyhow::Context;
use gateway::config::{Config, Settings};
use gateway::hub::Hub;
use gateway::node::Node;
use gateway::{backends, http, metrics, server};
use std::sync::Arc;
use tracing_subscriber::EnvFilter;

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let config = Config::from_settings(settings)?;
    init_logging(&config)?;
    let prometheus = metrics::install()?;
    let listener =
        server::bind(&config.listen).with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("ws://{addr}/ws"));
    if config.dev {
        tracing::warn!(
            "dev mode: POST /dev/token mints tokens for anyone; never use in production"
        );
    }
    let stop = server::shutdown_signal().context("installing signal handlers")?;
    let hub = Arc::new(Hub::new());
    let (backends, changes) = backends::connect(&config, hub.clone()).await?;
    let mode = if config.redis.is_some() {
        "clustered"
    } else {
        "embedded"
    };
    let node = Node::new(config, public_url, Some(prometheus), hub, backends)?;
    node.announce_changes(changes).await;
    node.registry.heartbeat(node.info()).await?;
    tokio::spawn(node.clone().run_maintenance());
    tokio::spawn(node.clone().run_presence_heartbeat());
    tracing::info!(
        addr = %addr,
        node = %node.config.node_id,
        mode,
        "listening"
    );
    let router = http::router(node.clone());
    server::serve(node, listener, router, stop).await;
    Ok(())
}
