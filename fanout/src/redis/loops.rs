//! The broker's background tasks: the pub/sub reader, the reconnect watcher and the
//! periodic check (health, slot map, positions). Each holds a `Weak` to the broker and ends
//! when the broker is dropped.

use super::RedisBroker;
use super::connect::value_bytes;
use super::envelope::{self, Envelope};
use super::positions::CheckScope;
use bytes::Bytes;
use fred::interfaces::ClientLike;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often a node on a Redis Cluster re-reads the slot map.
const SLOT_CHECK: Duration = Duration::from_secs(1);

/// Hands what an envelope carries to whom it is for.
fn on_envelope(broker: &Arc<RedisBroker>, raw: Bytes) {
    match envelope::decode(&raw) {
        Ok(Envelope::Publication(p)) => broker.on_publication(p),
        Ok(Envelope::Control(event)) => broker.dispatcher.dispatch_control(&event),
        Ok(Envelope::Command { request, command }) => broker.on_command(request, command),
        Ok(Envelope::Reply { request, reply }) => broker.on_reply(&request, reply),
        Err(e) => {
            broker.stats.bad_envelopes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "undecodable envelope dropped");
        }
    }
}

pub(super) async fn read_loop(
    broker: Weak<RedisBroker>,
    mut rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let message = rx.recv().await;
        let Some(broker) = broker.upgrade() else {
            break;
        };
        match message {
            Ok(message) => match value_bytes(message.value) {
                Some(raw) => on_envelope(&broker, raw),
                None => {
                    broker.stats.bad_envelopes.fetch_add(1, Ordering::Relaxed);
                }
            },
            Err(RecvError::Lagged(n)) => {
                broker.stats.lagged.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(missed = n, "pub/sub receiver lagged; healing every channel");
                broker.check_positions(CheckScope::All).await;
            }
            Err(RecvError::Closed) => break,
        }
    }
}

pub(super) async fn reconnect_loop(
    broker: Weak<RedisBroker>,
    mut rx: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
) {
    while rx.recv().await.is_ok() {
        let Some(broker) = broker.upgrade() else {
            break;
        };
        tracing::info!("redis subscriber reconnected; subscribing again and healing gaps");
        // Subscribe again to every followed channel (on a cluster, on whichever primary owns
        // each partition now), retrying until it went through, then heal what was missed.
        let mut delay = Duration::from_millis(100);
        while !broker.resync(true).await {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

pub(super) async fn check_loop(broker: Weak<RedisBroker>) {
    let interval = match broker.upgrade() {
        Some(b) => b.config.position_check_interval,
        None => return,
    };
    let mut last_check = Instant::now();
    let mut last_slots = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(broker) = broker.upgrade() else {
            break;
        };
        let ping: Result<(), _> = broker.client.ping(None).await;
        broker.healthy.store(ping.is_ok(), Ordering::Relaxed);
        let watch = broker.subscriber.is_clustered() || broker.unverified.load(Ordering::Relaxed);
        if watch && last_slots.elapsed() >= SLOT_CHECK {
            last_slots = Instant::now();
            broker.resync(false).await;
        }
        if ping.is_ok() && last_check.elapsed() >= interval {
            last_check = Instant::now();
            broker.check_positions(CheckScope::Due).await;
        }
    }
}
