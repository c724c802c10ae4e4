//! One typed interface per Lua script of the broker: an argument struct that builds the
//! script's `KEYS` and `ARGV` in the order its header states, and an enum for its answer.
//! Nothing else in the broker knows a script's positions or status codes; the unit tests
//! below hold each struct to its script's header.

use super::Keyspace;
use crate::Payload;
use bytes::Bytes;
use fred::clients::Client;
use fred::types::Value;
use fred::types::scripts::Script;
use std::sync::Arc;
use std::time::Duration;

pub(super) const PUBLISH_LUA: &str = include_str!("publish.lua");
pub(super) const HISTORY_LUA: &str = include_str!("history.lua");
pub(super) const REWIND_LUA: &str = include_str!("rewind.lua");
pub(super) const ARCHIVED_LUA: &str = include_str!("archived.lua");

/// The broker's scripts, loaded once at start (`EVALSHA`, reloaded when Redis lost them).
pub(super) struct Scripts {
    publish: Script,
    history: Script,
    rewind: Script,
    archived: Script,
}

impl Scripts {
    pub(super) async fn load(client: &Client) -> Result<Self, fred::error::Error> {
        let scripts = Self {
            publish: Script::from_lua(PUBLISH_LUA),
            history: Script::from_lua(HISTORY_LUA),
            rewind: Script::from_lua(REWIND_LUA),
            archived: Script::from_lua(ARCHIVED_LUA),
        };
        for script in [
            &scripts.publish,
            &scripts.history,
            &scripts.rewind,
            &scripts.archived,
        ] {
            script.load(client).await?;
        }
        Ok(scripts)
    }

    pub(super) async fn publish(
        &self,
        client: &Client,
        call: &PublishCall<'_>,
    ) -> Result<PublishReply, ScriptError> {
        let values: Vec<Value> = self
            .publish
            .evalsha_with_reload(client, call.keys(), call.args())
            .await?;
        PublishReply::parse(values)
    }

    pub(super) async fn history(
        &self,
        client: &Client,
        call: &HistoryCall<'_>,
    ) -> Result<HistoryReply, ScriptError> {
        let values: Vec<Value> = self
            .history
            .evalsha_with_reload(client, call.keys(), call.args())
            .await?;
        HistoryReply::parse(values)
    }

    /// Whether the channel's epoch is no longer the one given (see [`RewindCall`]).
    pub(super) async fn rewind(
        &self,
        client: &Client,
        call: &RewindCall<'_>,
    ) -> Result<bool, ScriptError> {
        let done: i64 = self
            .rewind
            .evalsha_with_reload(client, call.keys(), call.args())
            .await?;
        Ok(done == 1)
    }

    /// How many channels' archived marks rose.
    pub(super) async fn archived(
        &self,
        client: &Client,
        call: &ArchivedCall,
    ) -> Result<u64, ScriptError> {
        let raised: i64 = self
            .archived
            .evalsha_with_reload(client, call.keys.clone(), call.args())
            .await?;
        Ok(raised.max(0) as u64)
    }
}

/// Why a script call failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ScriptError {
    /// Redis did not run it or did not answer (see `connect::is_transient`).
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
    /// It answered something its header does not promise.
    #[error("{0}")]
    Reply(&'static str),
}

/// The keys of one channel that the publish and rewind scripts touch (one hash slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChannelKeys {
    pub meta: String,
    pub history: String,
    pub idem: String,
    pub idem_expiry: String,
}

impl ChannelKeys {
    pub(super) fn new(keyspace: &Keyspace, p: usize, channel: &str) -> Self {
        Self {
            meta: keyspace.meta(p, channel),
            history: keyspace.history(p, channel),
            idem: keyspace.idem(p, channel),
            idem_expiry: keyspace.idem_expiry(p, channel),
        }
    }

    /// The four keys in the order both scripts' headers list them.
    fn to_vec(&self) -> Vec<String> {
        vec![
            self.meta.clone(),
            self.history.clone(),
            self.idem.clone(),
            self.idem_expiry.clone(),
        ]
    }
}

/// What a script does when the channel has no state in Redis (never published, expired, or
/// lost with a Redis restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WhenNew {
    /// Answer "no state": the caller reads the channel's archived position and calls again.
    AskArchive,
    /// Start the channel at `epoch` and `offset` (its archived top, or a new epoch at 0).
    Start { epoch: String, offset: u64 },
}

impl WhenNew {
    fn ask(&self) -> Value {
        flag(matches!(self, Self::AskArchive))
    }

    fn epoch(&self) -> Value {
        match self {
            Self::AskArchive => "".into(),
            Self::Start { epoch, .. } => epoch.as_str().into(),
        }
    }

    fn offset(&self) -> Value {
        match self {
            Self::AskArchive => 0i64.into(),
            Self::Start { offset, .. } => (*offset as i64).into(),
        }
    }
}

fn flag(on: bool) -> Value {
    Value::from(if on { "1" } else { "0" })
}

fn secs(d: Duration) -> Value {
    (d.as_secs().max(1) as i64).into()
}

/// publish.lua: dedup, next offset, history append (and archive stream), SPUBLISH.
#[derive(Debug)]
pub(super) struct PublishCall<'a> {
    pub keys: ChannelKeys,
    /// The partition's archive stream.
    pub archive_stream: String,
    /// The channel's sharded pub/sub channel.
    pub shard_channel: String,
    pub channel: &'a str,
    pub from: &'a str,
    pub payload: &'a Payload,
    pub now_ms: u64,
    pub idem: Option<&'a str>,
    pub when_new: WhenNew,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub meta_ttl: Duration,
    pub dedup_window: Duration,
    pub dedup_max_keys: usize,
    /// Whether to append to the archive stream.
    pub archived: bool,
    /// The archive stream's bound (entries per partition).
    pub archive_bound: usize,
}

impl PublishCall<'_> {
    fn keys(&self) -> Vec<String> {
        let mut keys = self.keys.to_vec();
        keys.push(self.archive_stream.clone());
        keys
    }

    fn args(&self) -> Vec<Value> {
        vec![
            self.shard_channel.as_str().into(),
            self.channel.into(),
            self.from.into(),
            Value::Bytes(Bytes::copy_from_slice(&[self.payload.tag()])),
            Value::Bytes(self.payload.bytes().clone()),
            (self.now_ms as i64).into(),
            self.idem.unwrap_or_default().into(),
            self.when_new.epoch(),
            (self.history_size as i64).into(),
            secs(self.history_ttl),
            secs(self.meta_ttl),
            (self.dedup_window.as_millis() as i64).into(),
            (self.dedup_max_keys as i64).into(),
            flag(self.archived),
            (self.archive_bound as i64).into(),
            self.when_new.ask(),
            self.when_new.offset(),
        ]
    }
}

/// What publish.lua answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PublishReply {
    /// Accepted at `offset`.
    Published { offset: u64, epoch: Arc<str> },
    /// The idempotency key was seen: the first publish's offset.
    Duplicate { offset: u64, epoch: Arc<str> },
    /// The channel holds its most idempotency keys.
    DedupFull,
    /// The channel has no state: call again with [`WhenNew::Start`].
    NoState,
    /// The partition's archive stream is at its bound.
    ArchiveFull,
}

impl PublishReply {
    fn parse(values: Vec<Value>) -> Result<Self, ScriptError> {
        let bad = ScriptError::Reply("publish script: unexpected reply");
        let [status, offset, epoch] = <[Value; 3]>::try_from(values).map_err(|_| bad)?;
        let bad = || ScriptError::Reply("publish script: unexpected reply");
        let (Some(status), Some(offset), Some(epoch)) = (
            status.as_u64(),
            offset.as_u64(),
            epoch.as_bytes_str().map(|s| Arc::<str>::from(&*s)),
        ) else {
            return Err(bad());
        };
        match status {
            0 => Ok(Self::Published { offset, epoch }),
            1 => Ok(Self::Duplicate { offset, epoch }),
            2 => Ok(Self::DedupFull),
            3 => Ok(Self::NoState),
            4 => Ok(Self::ArchiveFull),
            _ => Err(bad()),
        }
    }
}

/// history.lua: a channel's position and a page of its recent history.
#[derive(Debug)]
pub(super) struct HistoryCall<'a> {
    pub meta: &'a str,
    pub history: &'a str,
    /// Entries after this offset (oldest first); `None`: the newest (newest first).
    pub since: Option<u64>,
    pub limit: usize,
    /// Entries before this offset.
    pub before: Option<u64>,
    /// Entries older than this (ms) are not given back, unless the archive lacks them.
    pub oldest_ms: u64,
    pub meta_ttl: Duration,
    pub when_new: WhenNew,
}

impl HistoryCall<'_> {
    fn keys(&self) -> Vec<String> {
        vec![self.meta.to_owned(), self.history.to_owned()]
    }

    fn args(&self) -> Vec<Value> {
        let optional = |o: Option<u64>| Value::from(o.map(|n| n.to_string()).unwrap_or_default());
        vec![
            optional(self.since),
            (self.limit as i64).into(),
            self.when_new.epoch(),
            secs(self.meta_ttl),
            (self.oldest_ms as i64).into(),
            optional(self.before),
            self.when_new.ask(),
            self.when_new.offset(),
        ]
    }
}

/// What history.lua answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HistoryReply {
    /// The channel has no state: call again with [`WhenNew::Start`].
    NoState,
    /// The channel's top offset and epoch, and the entries (MessagePack envelopes).
    Page {
        offset: u64,
        epoch: Arc<str>,
        entries: Vec<Bytes>,
    },
}

impl HistoryReply {
    fn parse(values: Vec<Value>) -> Result<Self, ScriptError> {
        if values.len() == 1 && values[0].as_i64() == Some(-1) {
            return Ok(Self::NoState);
        }
        let mut values = values.into_iter();
        let offset = values
            .next()
            .and_then(|v| v.as_u64())
            .ok_or(ScriptError::Reply("history script: no offset"))?;
        let epoch: Arc<str> = values
            .next()
            .and_then(|v| v.as_bytes_str().map(|s| Arc::from(&*s)))
            .ok_or(ScriptError::Reply("history script: no epoch"))?;
        let entries = values
            .map(|v| {
                super::connect::value_bytes(v)
                    .ok_or(ScriptError::Reply("history script: bad entry"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::Page {
            offset,
            epoch,
            entries,
        })
    }
}

/// rewind.lua: a new epoch for a channel whose offset went backwards (a failover lost
/// acknowledged writes), unless its epoch changed already.
#[derive(Debug)]
pub(super) struct RewindCall<'a> {
    pub keys: ChannelKeys,
    /// The epoch the node delivered in.
    pub epoch: &'a str,
    /// The last offset the node delivered (the new epoch starts above it).
    pub last: u64,
    pub new_epoch: String,
    pub meta_ttl: Duration,
}

impl RewindCall<'_> {
    fn keys(&self) -> Vec<String> {
        self.keys.to_vec()
    }

    fn args(&self) -> Vec<Value> {
        vec![
            self.epoch.into(),
            (self.last as i64).into(),
            self.new_epoch.as_str().into(),
            secs(self.meta_ttl),
        ]
    }
}

/// archived.lua: raises channels' archived marks (all of one partition: one slot).
#[derive(Debug, Default)]
pub(super) struct ArchivedCall {
    keys: Vec<String>,
    marks: Vec<(String, u64)>,
}

impl ArchivedCall {
    /// Adds a channel: its meta key, and the epoch and highest offset committed.
    pub(super) fn push(&mut self, meta: String, epoch: &str, offset: u64) {
        self.keys.push(meta);
        self.marks.push((epoch.to_owned(), offset));
    }

    fn args(&self) -> Vec<Value> {
        self.marks
            .iter()
            .flat_map(|(epoch, offset)| [epoch.as_str().into(), (*offset as i64).into()])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The highest `NAME[n]` index a script reads.
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

    fn keys(keyspace: &Keyspace) -> ChannelKeys {
        ChannelKeys::new(keyspace, keyspace.partition("room:a"), "room:a")
    }

    fn publish_call(payload: &Payload, when_new: WhenNew) -> PublishCall<'_> {
        let keyspace = Keyspace::new("gw", 4);
        PublishCall {
            keys: keys(&keyspace),
            archive_stream: keyspace.archive_stream(0),
            shard_channel: keyspace.pubsub_channel("room:a"),
            channel: "room:a",
            from: "ann",
            payload,
            now_ms: 1_000,
            idem: Some("k1"),
            when_new,
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            meta_ttl: Duration::from_millis(10),
            dedup_window: Duration::from_millis(1_500),
            dedup_max_keys: 7,
            archived: true,
            archive_bound: 99,
        }
    }

    #[test]
    fn every_call_builds_what_its_script_reads() {
        let payload = Payload::from_value(&serde_json::json!({"t": 1}));
        let call = publish_call(&payload, WhenNew::AskArchive);
        assert_eq!(call.keys().len(), highest(PUBLISH_LUA, "KEYS"));
        assert_eq!(call.args().len(), highest(PUBLISH_LUA, "ARGV"));
        let keyspace = Keyspace::new("gw", 4);
        let k = keys(&keyspace);
        let history = HistoryCall {
            meta: &k.meta,
            history: &k.history,
            since: Some(3),
            limit: 5,
            before: None,
            oldest_ms: 0,
            meta_ttl: Duration::from_secs(5),
            when_new: WhenNew::AskArchive,
        };
        assert_eq!(history.keys().len(), highest(HISTORY_LUA, "KEYS"));
        assert_eq!(history.args().len(), highest(HISTORY_LUA, "ARGV"));
        let rewind = RewindCall {
            keys: k.clone(),
            epoch: "e",
            last: 3,
            new_epoch: "f".into(),
            meta_ttl: Duration::from_secs(5),
        };
        assert_eq!(rewind.keys().len(), highest(REWIND_LUA, "KEYS"));
        assert_eq!(rewind.args().len(), highest(REWIND_LUA, "ARGV"));
        // archived.lua reads ARGV in pairs, one per key.
        let mut archived = ArchivedCall::default();
        archived.push(k.meta.clone(), "e", 9);
        archived.push(keyspace.meta(0, "room:b"), "e", 4);
        assert_eq!(archived.args().len(), 2 * archived.keys.len());
        assert!(ARCHIVED_LUA.contains("ARGV[2 * i - 1]") && ARCHIVED_LUA.contains("ARGV[2 * i]"));
    }

    #[test]
    fn publish_arguments_sit_where_the_script_reads_them() {
        let payload = Payload::from_value(&serde_json::json!({"t": 1}));
        let start = WhenNew::Start {
            epoch: "ep".into(),
            offset: 41,
        };
        let args = publish_call(&payload, start).args();
        let text = |i: usize| args[i - 1].as_bytes_str().map(|s| s.to_string());
        let int = |i: usize| args[i - 1].as_i64();
        assert_eq!(text(2).as_deref(), Some("room:a"));
        assert_eq!(text(3).as_deref(), Some("ann"));
        assert_eq!(
            args[3],
            Value::Bytes(Bytes::copy_from_slice(&[payload.tag()]))
        );
        assert_eq!(args[4], Value::Bytes(payload.bytes().clone()));
        assert_eq!(int(6), Some(1_000));
        assert_eq!(text(7).as_deref(), Some("k1"));
        assert_eq!(text(8).as_deref(), Some("ep"));
        assert_eq!(int(9), Some(10));
        assert_eq!(int(10), Some(60));
        // TTLs in seconds are at least 1 (EXPIRE 0 would delete the key).
        assert_eq!(int(11), Some(1));
        assert_eq!(int(12), Some(1_500));
        assert_eq!(int(13), Some(7));
        assert_eq!(text(14).as_deref(), Some("1"));
        assert_eq!(int(15), Some(99));
        assert_eq!(text(16).as_deref(), Some("0"));
        assert_eq!(int(17), Some(41));
        let ask = publish_call(&payload, WhenNew::AskArchive).args();
        assert_eq!(ask[15].as_bytes_str().as_deref(), Some("1"));
    }

    #[test]
    fn replies_map_to_their_meaning_and_anything_else_is_an_error() {
        let reply = |s: i64, o: i64, e: &str| vec![s.into(), o.into(), e.into()];
        assert_eq!(
            PublishReply::parse(reply(0, 5, "ep")).unwrap(),
            PublishReply::Published {
                offset: 5,
                epoch: "ep".into()
            }
        );
        assert_eq!(
            PublishReply::parse(reply(1, 3, "ep")).unwrap(),
            PublishReply::Duplicate {
                offset: 3,
                epoch: "ep".into()
            }
        );
        assert_eq!(
            PublishReply::parse(reply(2, 0, "ep")).unwrap(),
            PublishReply::DedupFull
        );
        assert_eq!(
            PublishReply::parse(reply(3, 0, "")).unwrap(),
            PublishReply::NoState
        );
        assert_eq!(
            PublishReply::parse(reply(4, 0, "ep")).unwrap(),
            PublishReply::ArchiveFull
        );
        assert!(PublishReply::parse(reply(5, 0, "ep")).is_err());
        assert!(PublishReply::parse(vec![0i64.into()]).is_err());

        assert_eq!(
            HistoryReply::parse(vec![(-1i64).into()]).unwrap(),
            HistoryReply::NoState
        );
        assert_eq!(
            HistoryReply::parse(vec![7i64.into(), "ep".into(), Value::Bytes("x".into())]).unwrap(),
            HistoryReply::Page {
                offset: 7,
                epoch: "ep".into(),
                entries: vec![Bytes::from_static(b"x")]
            }
        );
        assert!(HistoryReply::parse(vec![7i64.into()]).is_err());
        assert!(HistoryReply::parse(vec![7i64.into(), "ep".into(), 3i64.into()]).is_err());
    }
}
