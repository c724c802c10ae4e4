//! Presence kept in process memory.

use crate::{Change, Member, Presence, PresenceError, Stats};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

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
/// outlive it and `heartbeat` has nothing to expire.
#[derive(Default)]
pub struct LocalPresence {
    channels: Mutex<HashMap<String, Channel>>,
}

impl LocalPresence {
    /// An empty presence table.
    pub fn new() -> Self {
        Self::default()
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
        let mut channels = self.channels.lock();
        let channel = channels.entry(channel.to_owned()).or_default();
        channel.conns += 1;
        let entry = channel.users.entry(user.to_owned()).or_insert(Entry {
            name: name.map(str::to_owned),
            conns: 0,
        });
        entry.conns += 1;
        if name.is_some() {
            entry.name = name.map(str::to_owned);
        }
        Ok(entry.conns == 1)
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
        if last {
            state.users.remove(user);
            if state.users.is_empty() {
                channels.remove(channel);
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
