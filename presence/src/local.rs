//! Presence kept in process memory.

use crate::{Change, FeedEvent, FeedFilter, FeedKind, Member, Presence, PresenceError, Stats};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;

/// Most events the in-process feed holds; past it the oldest are dropped (and logged): a
/// webhook receiver down for that long has lost them anyway.
const FEED_CAPACITY: usize = 100_000;

struct Entry {
    name: Option<String>,
    conns: u32,
}

/// One channel's users, in user-id order (so that pages are ranges), and their connections.
#[derive(Default)]
struct Channel {
    users: BTreeMap<String, Entry>,
    conns: u64,
}

/// In-process [`Presence`] for one node: the node is the process, so its entries never
/// outlive it and `heartbeat` has nothing to expire; the node always leads its feed.
#[derive(Default)]
pub struct LocalPresence {
    channels: Mutex<HashMap<String, Channel>>,
    filter: Option<FeedFilter>,
    feed: Mutex<Feed>,
}

/// The in-process change feed: events in order, each with a sequence number as its id.
#[derive(Default)]
struct Feed {
    events: VecDeque<FeedEvent>,
    next: u64,
    /// A random prefix: ids stay unique across restarts of the node.
    run: String,
}

impl Feed {
    fn record(&mut self, kind: FeedKind, channel: &str, user: Option<&str>, data: Option<&str>) {
        if self.run.is_empty() {
            self.run = format!("{:08x}", rand::random::<u32>());
        }
        if self.events.len() >= FEED_CAPACITY {
            self.events.pop_front();
            tracing::warn!("webhook feed full: the oldest event was dropped");
        }
        self.next += 1;
        self.events.push_back(FeedEvent {
            id: format!("{}-{}", self.run, self.next),
            kind,
            channel: channel.to_owned(),
            user: user.map(str::to_owned),
            data: data.map(str::to_owned),
            time_ms: fanout::util::unix_millis(),
            partition: 0,
        });
    }
}

impl LocalPresence {
    /// An empty presence table.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty presence table whose feed records the channels `filter` accepts.
    pub fn with_feed(filter: FeedFilter) -> Self {
        Self {
            filter: Some(filter),
            ..Self::default()
        }
    }

    fn feeds(&self, channel: &str) -> bool {
        self.filter.as_ref().is_some_and(|f| f(channel))
    }
}

#[async_trait::async_trait]
impl Presence for LocalPresence {
    async fn add(
        &self,
        channel: &str,
        user: &str,
        name: Option<&str>,
    ) -> Result<bool, PresenceError> {
        let feeds = self.feeds(channel);
        let mut channels = self.channels.lock();
        let state = channels.entry(channel.to_owned()).or_default();
        state.conns += 1;
        let occupied = state.conns == 1;
        let entry = state.users.entry(user.to_owned()).or_insert(Entry {
            name: name.map(str::to_owned),
            conns: 0,
        });
        entry.conns += 1;
        if name.is_some() {
            entry.name = name.map(str::to_owned);
        }
        let first = entry.conns == 1;
        if feeds {
            let mut feed = self.feed.lock();
            if occupied {
                feed.record(FeedKind::ChannelOccupied, channel, None, None);
            }
            if first {
                feed.record(FeedKind::MemberAdded, channel, Some(user), None);
            }
        }
        Ok(first)
    }

    async fn remove(&self, channel: &str, user: &str) -> Result<bool, PresenceError> {
        let mut channels = self.channels.lock();
        let Some(state) = channels.get_mut(channel) else {
            return Ok(false);
        };
        let Some(entry) = state.users.get_mut(user) else {
            return Ok(false);
        };
        entry.conns -= 1;
        state.conns -= 1;
        let last = entry.conns == 0;
        let vacated = state.conns == 0;
        if last {
            state.users.remove(user);
            if state.users.is_empty() {
                channels.remove(channel);
            }
        }
        if self.feeds(channel) {
            let mut feed = self.feed.lock();
            if last {
                feed.record(FeedKind::MemberRemoved, channel, Some(user), None);
            }
            if vacated {
                feed.record(FeedKind::ChannelVacated, channel, None, None);
            }
        }
        Ok(last)
    }

    async fn members_page(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, PresenceError> {
        let channels = self.channels.lock();
        let Some(state) = channels.get(channel) else {
            return Ok(Vec::new());
        };
        let from = match after {
            Some(user) => Bound::Excluded(user),
            None => Bound::Unbounded,
        };
        Ok(state
            .users
            .range::<str, _>((from, Bound::Unbounded))
            .take(limit.max(1))
            .map(|(user, e)| Member {
                user: user.clone(),
                name: e.name.clone(),
                conns: e.conns,
            })
            .collect())
    }

    async fn stats(&self, channel: &str) -> Result<Stats, PresenceError> {
        let channels = self.channels.lock();
        Ok(channels
            .get(channel)
            .map(|c| Stats {
                users: c.users.len() as u64,
                conns: c.conns,
            })
            .unwrap_or_default())
    }

    async fn heartbeat(&self) -> Result<Vec<Change>, PresenceError> {
        Ok(Vec::new())
    }

    async fn feed_client_event(
        &self,
        channel: &str,
        user: &str,
        data: &str,
    ) -> Result<(), PresenceError> {
        if self.feeds(channel) {
            self.feed
                .lock()
                .record(FeedKind::ClientEvent, channel, Some(user), Some(data));
        }
        Ok(())
    }

    async fn feed_lead(&self, _lease: std::time::Duration) -> Result<bool, PresenceError> {
        Ok(true)
    }

    async fn feed_read(&self, max: usize) -> Result<Vec<FeedEvent>, PresenceError> {
        Ok(self.feed.lock().events.iter().take(max).cloned().collect())
    }

    async fn feed_ack(&self, events: &[FeedEvent]) -> Result<(), PresenceError> {
        let mut feed = self.feed.lock();
        let acked: std::collections::HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        feed.events.retain(|e| !acked.contains(e.id.as_str()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_and_last_connection_are_reported() {
        let p = LocalPresence::new();
        assert!(p.add("room:a", "bob", Some("Bob")).await.unwrap());
        assert!(!p.add("room:a", "bob", None).await.unwrap());
        assert!(p.add("room:a", "alice", None).await.unwrap());
        let members = p.members_page("room:a", None, 100).await.unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[1].conns, 2);
        assert_eq!(members[1].name.as_deref(), Some("Bob"));
        assert!(!p.remove("room:a", "bob").await.unwrap());
        assert!(p.remove("room:a", "bob").await.unwrap());
        assert!(!p.remove("room:a", "bob").await.unwrap());
        assert_eq!(p.members_page("room:a", None, 100).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_feed_records_transitions_of_fed_channels_in_order_until_acknowledged() {
        let p = LocalPresence::with_feed(std::sync::Arc::new(|c: &str| c.starts_with("live:")));
        p.add("live:a", "bob", None).await.unwrap();
        p.add("live:a", "bob", None).await.unwrap();
        p.add("live:a", "ann", None).await.unwrap();
        p.add("room:b", "ann", None).await.unwrap();
        p.feed_client_event("live:a", "ann", "{}").await.unwrap();
        p.feed_client_event("room:b", "ann", "{}").await.unwrap();
        p.remove("live:a", "bob").await.unwrap();
        p.remove("live:a", "bob").await.unwrap();
        p.remove("live:a", "ann").await.unwrap();
        let events = p.feed_read(100).await.unwrap();
        let seen: Vec<(FeedKind, Option<&str>)> =
            events.iter().map(|e| (e.kind, e.user.as_deref())).collect();
        assert_eq!(
            seen,
            [
                (FeedKind::ChannelOccupied, None),
                (FeedKind::MemberAdded, Some("bob")),
                (FeedKind::MemberAdded, Some("ann")),
                (FeedKind::ClientEvent, Some("ann")),
                (FeedKind::MemberRemoved, Some("bob")),
                (FeedKind::MemberRemoved, Some("ann")),
                (FeedKind::ChannelVacated, None),
            ]
        );
        // Read again until acknowledged; then gone.
        assert_eq!(p.feed_read(3).await.unwrap(), events[..3]);
        p.feed_ack(&events[..3]).await.unwrap();
        assert_eq!(p.feed_read(100).await.unwrap(), events[3..]);
        let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), events.len());
    }

    #[tokio::test]
    async fn pages_list_every_member_once_and_stats_count() {
        let p = LocalPresence::new();
        for i in 0..25 {
            p.add("room:a", &format!("u{i:02}"), None).await.unwrap();
        }
        p.add("room:a", "u03", None).await.unwrap();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = p
                .members_page("room:a", after.as_deref(), 10)
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|m| m.user.clone());
            seen.extend(page.into_iter().map(|m| m.user));
        }
        let expected: Vec<String> = (0..25).map(|i| format!("u{i:02}")).collect();
        assert_eq!(seen, expected);
        assert_eq!(p.members_page("room:a", None, 100).await.unwrap().len(), 25);
        assert_eq!(
            p.stats("room:a").await.unwrap(),
            Stats {
                users: 25,
                conns: 26
            }
        );
        p.remove("room:a", "u03").await.unwrap();
        assert_eq!(
            p.stats("room:a").await.unwrap(),
            Stats {
                users: 25,
                conns: 25
            }
        );
        assert_eq!(p.stats("room:none").await.unwrap(), Stats::default());
    }
}
