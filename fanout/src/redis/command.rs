//! Node commands across the cluster (disconnect a user, unsubscribe, list channels, stats):
//! a request/reply over sharded pub/sub.
//!
//! The asking broker SPUBLISHes the command on the control channel, which every node
//! subscribes to; Redis answers how many nodes received it. Each node runs it on its own
//! connections and SPUBLISHes its answer on the asker's reply channel (named after the
//! asking broker's instance id, which opens the request id). The asker waits for that many
//! answers, or [`COMMAND_TIMEOUT`], and merges them. Nothing is polled.

use super::RedisBroker;
use super::connect::unavailable;
use super::envelope;
use crate::broker::{BrokerError, CommandReply, NodeCommand};
use fred::interfaces::PubsubInterface;
use fred::types::Value;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a node command waits for every node's answer.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers on their way to the node commands this broker is waiting on, by request id.
pub(super) type Pending =
    parking_lot::Mutex<std::collections::HashMap<String, mpsc::UnboundedSender<String>>>;

/// Removes a request from [`Pending`] however its wait ends (answered, timed out, dropped).
struct Waiting<'a> {
    pending: &'a Pending,
    request: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(self.request);
    }
}

/// The broker instance a request id belongs to (whose reply channel gets the answers).
fn instance_of(request: &str) -> &str {
    request
        .rsplit_once('.')
        .map_or(request, |(instance, _)| instance)
}

impl RedisBroker {
    /// Runs `command` on every node and merges their answers.
    pub(super) async fn run_command(
        &self,
        command: NodeCommand,
    ) -> Result<CommandReply, BrokerError> {
        let seq = self.command_seq.fetch_add(1, Ordering::Relaxed);
        let request = format!("{}.{seq}", self.instance);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending.lock().insert(request.clone(), tx);
        let _waiting = Waiting {
            pending: &self.pending,
            request: &request,
        };
        let receivers: i64 = self
            .client
            .spublish(
                self.control_channel.clone(),
                Value::Bytes(envelope::command(&request, &command)),
            )
            .await
            .map_err(unavailable)?;
        let receivers = usize::try_from(receivers).unwrap_or(0);
        let mut replies = Vec::with_capacity(receivers);
        let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
        while replies.len() < receivers {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(raw)) => match serde_json::from_str(&raw)
                    .ok()
                    .and_then(|v| CommandReply::from_json(&v))
                {
                    Some(reply) => replies.push(reply),
                    None => tracing::warn!(reply = %raw, "node command: unreadable answer"),
                },
                Ok(None) | Err(_) => {
                    tracing::warn!(
                        answered = replies.len(),
                        nodes = receivers,
                        "node command: not every node answered in time"
                    );
                    break;
                }
            }
        }
        Ok(CommandReply::merge(&command, replies))
    }

    /// Hands an answer to the command waiting for it (late answers are dropped).
    pub(super) fn on_reply(&self, request: &str, reply: String) {
        if let Some(tx) = self.pending.lock().get(request) {
            let _ = tx.send(reply);
        }
    }

    /// Runs a command another node (or this one) sent, and answers on the asker's channel.
    pub(super) fn on_command(self: &Arc<Self>, request: String, command: NodeCommand) {
        let reply = self
            .dispatcher
            .dispatch_command(&command)
            .to_json()
            .to_string();
        let broker = self.clone();
        tokio::spawn(async move {
            let channel = broker.config.keyspace.reply_channel(instance_of(&request));
            let sent: Result<i64, _> = broker
                .client
                .spublish(channel, Value::Bytes(envelope::reply(&request, &reply)))
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "node command answer not sent");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_request_names_its_instance() {
        assert_eq!(super::instance_of("0123abcd.17"), "0123abcd");
        assert_eq!(super::instance_of("plain"), "plain");
    }
}
