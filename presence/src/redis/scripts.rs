//! One typed call per presence script: each builds the `KEYS` and `ARGV` its script's header
//! lists, in that order, so that no other code knows a position. Key names come from
//! `Keyspace` (through [`ChannelKeys`]).

use fanout::redis::Keyspace;

pub(super) const ADD_LUA: &str = include_str!("add.lua");
pub(super) const REMOVE_LUA: &str = include_str!("remove.lua");
pub(super) const REAP_LUA: &str = include_str!("reap.lua");
pub(super) const RESTORE_LUA: &str = include_str!("restore.lua");
pub(super) const PAGE_LUA: &str = include_str!("page.lua");
pub(super) const STATS_LUA: &str = include_str!("stats.lua");
pub(super) const LEAD_LUA: &str = include_str!("lead.lua");

/// lead.lua: takes or renews the feed's lead for `node`; answers whether it holds it.
#[derive(Debug)]
pub(super) struct LeadCall<'a> {
    pub leader: String,
    pub node: &'a str,
    pub lease_ms: u64,
}

impl LeadCall<'_> {
    pub(super) fn keys(&self) -> Vec<String> {
        vec![self.leader.clone()]
    }

    pub(super) fn args(&self) -> Vec<String> {
        vec![self.node.to_owned(), self.lease_ms.to_string()]
    }

    /// The script's answer: whether the node leads.
    pub(super) fn leads(answer: i64) -> bool {
        answer == 1
    }
}

/// A channel's presence keys (all in the channel's partition).
#[derive(Debug, Clone)]
pub(super) struct ChannelKeys {
    /// node|user → connections.
    pub connections: String,
    /// user → connections on every node.
    pub users: String,
    /// user → display name.
    pub names: String,
    /// The users in id order (a sorted set of score 0, for paging).
    pub order: String,
    /// Connections on the channel.
    pub count: String,
}

impl ChannelKeys {
    /// The keys of `channel`, in its partition `p`.
    pub(super) fn new(keyspace: &Keyspace, p: usize, channel: &str) -> Self {
        let k = keyspace.presence(p, channel);
        Self {
            connections: k.connections,
            users: k.users,
            names: k.names,
            order: k.order,
            count: k.count,
        }
    }
}

/// add.lua, remove.lua and restore.lua: one connection more or fewer of `user` on this node,
/// or (restore) this node's entry put back to `restore` connections. Their answer is 1 when
/// the user's presence on the channel changed (first in, last out, back).
#[derive(Debug)]
pub(super) struct ChangeCall<'a> {
    pub keys: ChannelKeys,
    /// The channels where this node has entries (its index in the partition).
    pub node_index: String,
    /// The nodes with entries in the partition.
    pub nodes: String,
    pub node: &'a str,
    pub user: &'a str,
    pub name: Option<&'a str>,
    pub channel: &'a str,
    /// The partition's change feed.
    pub feed: String,
    /// Whether the transitions go to the feed (the channel is one the webhooks report).
    pub record: bool,
    /// restore.lua only: the connections this node knows of.
    pub restore: Option<u32>,
}

impl ChangeCall<'_> {
    pub(super) fn keys(&self) -> Vec<String> {
        let k = &self.keys;
        vec![
            k.connections.clone(),
            k.users.clone(),
            k.names.clone(),
            self.node_index.clone(),
            self.nodes.clone(),
            k.order.clone(),
            k.count.clone(),
            self.feed.clone(),
        ]
    }

    pub(super) fn args(&self) -> Vec<String> {
        let mut args = vec![
            self.node.to_owned(),
            self.user.to_owned(),
            self.name.unwrap_or("").to_owned(),
            self.channel.to_owned(),
            flag(self.record),
            fanout::util::unix_millis().to_string(),
        ];
        if let Some(count) = self.restore {
            args.push(count.to_string());
        }
        args
    }

    /// The script's answer: whether the user's presence changed.
    pub(super) fn changed(answer: i64) -> bool {
        answer == 1
    }
}

/// reap.lua: removes a dead node's entries on one channel; answers the users who left.
#[derive(Debug)]
pub(super) struct ReapCall<'a> {
    pub keys: ChannelKeys,
    /// The dead node's channel index in the partition.
    pub node_index: String,
    pub node: &'a str,
    pub channel: &'a str,
    /// The partition's change feed.
    pub feed: String,
    /// Whether the transitions go to the feed.
    pub record: bool,
}

impl ReapCall<'_> {
    pub(super) fn keys(&self) -> Vec<String> {
        let k = &self.keys;
        vec![
            k.connections.clone(),
            k.users.clone(),
            k.names.clone(),
            self.node_index.clone(),
            k.order.clone(),
            k.count.clone(),
            self.feed.clone(),
        ]
    }

    pub(super) fn args(&self) -> Vec<String> {
        vec![
            self.node.to_owned(),
            self.channel.to_owned(),
            flag(self.record),
            fanout::util::unix_millis().to_string(),
        ]
    }
}

/// A script's yes/no argument.
fn flag(on: bool) -> String {
    if on { "1" } else { "0" }.to_owned()
}

/// page.lua: up to `limit` users after `after`, as user, connections, name (repeated).
#[derive(Debug)]
pub(super) struct PageCall<'a> {
    pub keys: ChannelKeys,
    pub after: Option<&'a str>,
    pub limit: usize,
}

impl PageCall<'_> {
    pub(super) fn keys(&self) -> Vec<String> {
        vec![
            self.keys.order.clone(),
            self.keys.users.clone(),
            self.keys.names.clone(),
        ]
    }

    pub(super) fn args(&self) -> Vec<String> {
        vec![
            self.after.unwrap_or("").to_owned(),
            self.limit.max(1).to_string(),
        ]
    }
}

/// stats.lua: users and connections on the channel.
#[derive(Debug)]
pub(super) struct StatsCall {
    pub keys: ChannelKeys,
}

impl StatsCall {
    pub(super) fn keys(&self) -> Vec<String> {
        vec![self.keys.users.clone(), self.keys.count.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The highest `KEYS[n]` or `ARGV[n]` a script reads.
    fn highest(lua: &str, name: &str) -> usize {
        let pattern = format!("{name}[");
        lua.match_indices(&pattern)
            .filter_map(|(i, _)| {
                let rest = &lua[i + pattern.len()..];
                rest[..rest.find(']')?].parse().ok()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn every_call_builds_what_its_script_reads() {
        let keyspace = Keyspace::new("gw", 4);
        let keys = ChannelKeys::new(&keyspace, keyspace.partition("room:a"), "room:a");
        let change = |restore| ChangeCall {
            keys: keys.clone(),
            node_index: keyspace.presence_node_index(0, "n1"),
            nodes: keyspace.presence_nodes(0),
            node: "n1",
            user: "ann",
            name: Some("Ann"),
            channel: "room:a",
            feed: keyspace.presence_feed(0),
            record: true,
            restore,
        };
        for lua in [ADD_LUA, REMOVE_LUA] {
            assert_eq!(change(None).keys().len(), highest(lua, "KEYS"));
            // remove.lua reads no name: it may read fewer, never more.
            assert!(highest(lua, "ARGV") <= change(None).args().len());
        }
        assert_eq!(highest(ADD_LUA, "ARGV"), 6);
        assert_eq!(change(Some(2)).keys().len(), highest(RESTORE_LUA, "KEYS"));
        assert_eq!(change(Some(2)).args().len(), highest(RESTORE_LUA, "ARGV"));
        assert_eq!(change(Some(2)).args()[6], "2");
        assert_eq!(change(None).args()[4], "1");
        let reap = ReapCall {
            keys: keys.clone(),
            node_index: keyspace.presence_node_index(0, "dead"),
            node: "dead",
            channel: "room:a",
            feed: keyspace.presence_feed(0),
            record: false,
        };
        assert_eq!(reap.keys().len(), highest(REAP_LUA, "KEYS"));
        assert_eq!(reap.args().len(), highest(REAP_LUA, "ARGV"));
        let page = PageCall {
            keys: keys.clone(),
            after: None,
            limit: 0,
        };
        assert_eq!(page.keys().len(), highest(PAGE_LUA, "KEYS"));
        assert_eq!(page.args(), ["", "1"]);
        let lead = LeadCall {
            leader: keyspace.feed_leader(),
            node: "n1",
            lease_ms: 10_000,
        };
        assert_eq!(lead.keys().len(), highest(LEAD_LUA, "KEYS"));
        assert_eq!(lead.args().len(), highest(LEAD_LUA, "ARGV"));
        let stats = StatsCall { keys };
        assert_eq!(stats.keys().len(), highest(STATS_LUA, "KEYS"));
        assert_eq!(highest(STATS_LUA, "ARGV"), 0);
    }
}
