//! Channel subscriptions in batches: fred sends one `SSUBSCRIBE` at a time on a subscriber
//! connection and waits for its answer, so a node subscribing thousands of personal channels
//! at once (a connect burst) would wait one round trip per channel. Every subscribe and
//! unsubscribe goes through one task instead, which takes what has queued up while the
//! previous command was in flight and sends it as one `SSUBSCRIBE`/`SUNSUBSCRIBE` per
//! partition (one hash slot each on a Redis Cluster; one command for all on one Redis).

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, PubsubInterface};
use std::collections::BTreeMap;
use tokio::sync::{mpsc, oneshot};

/// Most channels in one command.
const BATCH: usize = 500;

/// One change waiting for the batcher.
struct Change {
    subscribe: bool,
    partition: usize,
    channel: String,
    done: oneshot::Sender<Result<(), fred::error::Error>>,
}

/// The handle the broker keeps; the task ends when it is dropped.
pub(super) struct Subscriptions {
    tx: mpsc::UnboundedSender<Change>,
}

impl Subscriptions {
    /// Starts the batching task on `subscriber`.
    pub(super) fn start(subscriber: SubscriberClient) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(subscriber, rx));
        Self { tx }
    }

    /// `SSUBSCRIBE`s `channel` (a pub/sub channel of `partition`); returns once Redis
    /// confirmed it.
    pub(super) async fn subscribe(
        &self,
        partition: usize,
        channel: String,
    ) -> Result<(), fred::error::Error> {
        self.change(true, partition, channel).await
    }

    /// `SUNSUBSCRIBE`s `channel`.
    pub(super) async fn unsubscribe(
        &self,
        partition: usize,
        channel: String,
    ) -> Result<(), fred::error::Error> {
        self.change(false, partition, channel).await
    }

    async fn change(
        &self,
        subscribe: bool,
        partition: usize,
        channel: String,
    ) -> Result<(), fred::error::Error> {
        let (done, answer) = oneshot::channel();
        let gone = || fred::error::Error::new(fred::error::ErrorKind::Canceled, "broker stopped");
        self.tx
            .send(Change {
                subscribe,
                partition,
                channel,
                done,
            })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(subscriber: SubscriberClient, mut rx: mpsc::UnboundedReceiver<Change>) {
    let clustered = subscriber.is_clustered();
    let mut queued = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut queued, BATCH).await > 0 {
        // Runs of one kind keep each channel's changes in the order they were asked for
        // (the node also never has two in flight for one channel).
        let mut changes = queued.drain(..).peekable();
        while let Some(first) = changes.next() {
            let subscribe = first.subscribe;
            let mut groups: BTreeMap<usize, Vec<Change>> = BTreeMap::new();
            let group = |c: &Change| if clustered { c.partition } else { 0 };
            groups.entry(group(&first)).or_default().push(first);
            while let Some(next) = changes.next_if(|c| c.subscribe == subscribe) {
                groups.entry(group(&next)).or_default().push(next);
            }
            for (_, group) in groups {
                let names: Vec<String> = group.iter().map(|c| c.channel.clone()).collect();
                let result = if subscribe {
                    subscriber.ssubscribe(names).await
                } else {
                    subscriber.sunsubscribe(names).await
                };
                for change in group {
                    let _ = change.done.send(result.clone());
                }
            }
        }
    }
}
