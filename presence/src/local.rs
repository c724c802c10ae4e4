//! Presence kept in process memory.

use crate::{Change, Member, Presence, PresenceError};
use parking_lot::Mutex;
use std::collections::HashMap;

struct Entry {
    name: Option<String>,
    conns: u32,
}

/// In-process [`Presence`] for one node: the node is the process, so its entries never
/// outlive it and `heartbeat` has nothing to expire.
#[derive(Default)]
pub struct LocalPresence {
    channels: Mutex<HashMap<String, HashMap<String, Entry>>>,
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
        let users = channels.entry(channel.to_owned()).or_default();
        let entry = users.entry(user.to_owned()).or_insert(Entry {
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
        let Some(users) = channels.get_mut(channel) else {
            return Ok(false);
        };
        let Some(entry) = users.get_mut(user) else {
            return Ok(false);
        };
        entry.conns -= 1;
        let last = entry.conns == 0;
        if last {
            users.remove(user);
            if users.is_empty() {
                channels.remove(channel);
            }
        }
        Ok(last)
    }

    async fn members(&self, channel: &str) -> Result<Vec<Member>, PresenceError> {
        let channels = self.channels.lock();
        let mut members: Vec<Member> = channels
            .get(channel)
            .map(|users| {
                users
                    .iter()
                    .map(|(user, e)| Member {
                        user: user.clone(),
                        name: e.name.clone(),
                        conns: e.conns,
                    })
                    .collect()
            })
            .unwrap_or_default();
        members.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(members)
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
        let members = p.members("room:a").await.unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[1].conns, 2);
        assert_eq!(members[1].name.as_deref(), Some("Bob"));
        assert!(!p.remove("room:a", "bob").await.unwrap());
        assert!(p.remove("room:a", "bob").await.unwrap());
        assert!(!p.remove("room:a", "bob").await.unwrap());
        assert_eq!(p.members("room:a").await.unwrap().len(), 1);
    }
}
