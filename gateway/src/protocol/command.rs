//! Decoding client commands from either encoding.

use super::{Encoding, ErrorCode};
use crate::acl::{JoinLeave, valid_channel};
use fanout::Payload;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Longest idempotency key, bytes.
pub const MAX_IDEM_LEN: usize = 128;
/// Largest `history` limit.
pub const MAX_HISTORY_LIMIT: u64 = 1000;
/// `history` limit when none is given.
pub const DEFAULT_HISTORY_LIMIT: u64 = 100;
/// Largest `presence` page.
pub const MAX_PRESENCE_LIMIT: u64 = 1000;
/// Longest `presence` cursor, bytes (a user id).
const MAX_CURSOR_LEN: usize = 256;
/// Deepest nesting of arrays and maps in a payload, in either encoding: deep enough for any
/// real message, shallow enough that every frame carrying it (a `history` reply nests it four
/// levels further) stays within common parsers' limits (128 in serde_json).
pub const MAX_DATA_DEPTH: usize = 64;

/// Whether `value` nests arrays and maps more than `max` levels deep (`[]` is one level).
pub fn too_deep(value: &Value, max: usize) -> bool {
    match value {
        Value::Array(items) => max == 0 || items.iter().any(|v| too_deep(v, max - 1)),
        Value::Object(map) => max == 0 || map.values().any(|v| too_deep(v, max - 1)),
        _ => false,
    }
}

/// The nesting depth of JSON text (brackets outside strings), without parsing it into a tree.
pub fn json_text_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Checks a `presence` page request (the op and `GET /api/presence`): `limit` within
/// 1..=[`MAX_PRESENCE_LIMIT`], `cursor` a user id as this server hands them out.
pub fn check_presence_page(limit: Option<u64>, cursor: Option<&str>) -> Result<(), String> {
    if limit.is_some_and(|l| l == 0 || l > MAX_PRESENCE_LIMIT) {
        return Err(format!("limit must be 1..={MAX_PRESENCE_LIMIT}"));
    }
    if cursor.is_some_and(|c| c.is_empty() || c.len() > MAX_CURSOR_LEN) {
        return Err("cursor is not one this server gave".into());
    }
    Ok(())
}

/// A decoded client command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Client-chosen id, echoed in the reply.
    pub id: i64,
    /// What to do.
    pub op: Op,
}

/// The operations a client can ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Subscribe, optionally recovering from `since` within `epoch`.
    Subscribe {
        /// Channel.
        channel: String,
        /// Last offset the client saw.
        since: Option<u64>,
        /// Epoch of `since`.
        epoch: Option<String>,
        /// How to hear of presence changes (the namespace's default when `None`).
        join_leave: Option<JoinLeave>,
        /// A subscription token (Centrifugo's protocol): a JWT that grants this one
        /// channel to this user, beyond what the connection token grants.
        token: Option<String>,
        /// Fossil deltas asked for (Centrifugo's protocol, `delta: "fossil"`): granted
        /// where the namespace allows them.
        delta: bool,
    },
    /// Unsubscribe.
    Unsubscribe {
        /// Channel.
        channel: String,
    },
    /// Publish `data`.
    Publish {
        /// Channel.
        channel: String,
        /// Payload, kept in the encoding it came in.
        data: Payload,
        /// Idempotency key.
        idem: Option<String>,
    },
    /// List members, a page at a time.
    Presence {
        /// Channel.
        channel: String,
        /// Most members (every member, within one reply's size, when `None`).
        limit: Option<u64>,
        /// Where the previous page ended.
        cursor: Option<String>,
    },
    /// Count members and their connections.
    PresenceStats {
        /// Channel.
        channel: String,
    },
    /// Read history.
    History {
        /// Channel.
        channel: String,
        /// Exclusive lower bound.
        since: Option<u64>,
        /// Exclusive upper bound (pages back into the archive).
        before: Option<u64>,
        /// Most messages.
        limit: u64,
        /// The epoch `since` belongs to (Centrifugo's `since`): another epoch is refused.
        epoch: Option<String>,
        /// Newest first (Centrifugo's `reverse`).
        reverse: bool,
    },
    /// Replace the connection's token.
    Refresh {
        /// The new JWT.
        token: String,
    },
    /// Round trip.
    Ping,
    /// Renew a subscription token (Centrifugo's `sub_refresh`).
    SubRefresh {
        /// Channel.
        channel: String,
        /// The new subscription token.
        token: String,
    },
    /// Call a backend method (the rpc proxy's, `--proxy-rpc-url`).
    Rpc {
        /// Method name.
        method: String,
        /// The call's argument, if any.
        data: Option<Payload>,
    },
    /// A one-way message to the backend (Centrifugo's `send`; nothing receives one yet).
    Send,
}

/// A command that cannot be served as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandError {
    /// The command's id, or 0 when the frame is malformed.
    pub id: i64,
    /// Error code.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
    /// The frame itself is malformed (counts toward the bad-frame limit).
    pub malformed: bool,
}

impl CommandError {
    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        Self {
            id: 0,
            code: ErrorCode::BadRequest,
            message: message.into(),
            malformed: true,
        }
    }

    pub(crate) fn bad(id: i64, message: impl Into<String>) -> Self {
        Self {
            id,
            code: ErrorCode::BadRequest,
            message: message.into(),
            malformed: false,
        }
    }
}

/// Longest `rpc` method name, bytes.
pub const MAX_METHOD_LEN: usize = 256;

/// Decodes one frame's payload sent in `encoding`.
pub fn decode(encoding: Encoding, payload: &[u8]) -> Result<Command, CommandError> {
    let map: Map<String, Value> = match encoding {
        // (Centrifugo's frames go through `centrifuge::decode_frame`, not here.)
        Encoding::Json | Encoding::CentrifugeJson | Encoding::CentrifugeProtobuf => {
            serde_json::from_slice(payload)
                .map_err(|_| CommandError::malformed("frame is not a JSON object"))?
        }
        Encoding::MsgPack => rmp_serde::from_slice(payload).map_err(|_| {
            const WHY: &str =
                "values must be JSON-compatible (MessagePack bin and ext types are not accepted)";
            // A map with an integer id whose other values have no JSON form is a bad field,
            // not a malformed frame.
            #[derive(serde::Deserialize)]
            struct IdOnly {
                id: i64,
            }
            match rmp_serde::from_slice::<IdOnly>(payload) {
                Ok(IdOnly { id }) => CommandError::bad(id, WHY),
                Err(_) => CommandError::malformed(format!("frame is not a MessagePack map: {WHY}")),
            }
        })?,
    };
    let id = match map.get("id") {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| CommandError::malformed("id must be an integer"))?,
        Some(_) => return Err(CommandError::malformed("id must be an integer")),
        None => return Err(CommandError::malformed("missing id")),
    };
    let fields = Fields { id, map };
    let op = match fields.map.get("op") {
        Some(Value::String(op)) => op.as_str(),
        Some(_) => return Err(CommandError::bad(id, "op must be a string")),
        None => return Err(CommandError::bad(id, "missing op")),
    };
    let op = match op {
        "subscribe" => Op::Subscribe {
            channel: fields.channel()?,
            since: fields.opt_u64("since")?,
            epoch: fields.opt_string("epoch")?,
            join_leave: fields.join_leave()?,
            token: None,
            delta: false,
        },
        "unsubscribe" => Op::Unsubscribe {
            channel: fields.channel()?,
        },
        "publish" => {
            let idem = fields.opt_string("idem")?;
            if let Some(key) = &idem
                && (key.is_empty() || key.len() > MAX_IDEM_LEN)
            {
                return Err(CommandError {
                    id,
                    code: ErrorCode::TooLarge,
                    message: format!("idem must be 1..={MAX_IDEM_LEN} bytes"),
                    malformed: false,
                });
            }
            let data = fields
                .map
                .get("data")
                .ok_or_else(|| CommandError::bad(id, "missing data"))?;
            if too_deep(data, MAX_DATA_DEPTH) {
                return Err(CommandError::bad(
                    id,
                    format!("data nests arrays and maps deeper than {MAX_DATA_DEPTH} levels"),
                ));
            }
            Op::Publish {
                channel: fields.channel()?,
                data: match encoding {
                    Encoding::Json | Encoding::CentrifugeJson | Encoding::CentrifugeProtobuf => {
                        Payload::from_value(data)
                    }
                    Encoding::MsgPack => Payload::msgpack_from_value(data),
                },
                idem,
            }
        }
        "presence" => {
            let limit = fields.opt_u64("limit")?;
            let cursor = fields.opt_string("cursor")?;
            if let Err(why) = check_presence_page(limit, cursor.as_deref()) {
                return Err(CommandError::bad(id, why));
            }
            Op::Presence {
                channel: fields.channel()?,
                limit,
                cursor,
            }
        }
        "presence_stats" => Op::PresenceStats {
            channel: fields.channel()?,
        },
        "history" => {
            let limit = fields.opt_u64("limit")?.unwrap_or(DEFAULT_HISTORY_LIMIT);
            if limit > MAX_HISTORY_LIMIT {
                return Err(CommandError::bad(
                    id,
                    format!("limit must be at most {MAX_HISTORY_LIMIT}"),
                ));
            }
            Op::History {
                channel: fields.channel()?,
                since: fields.opt_u64("since")?,
                before: fields.opt_u64("before")?,
                limit,
                epoch: None,
                reverse: false,
            }
        }
        "refresh" => Op::Refresh {
            token: fields
                .opt_string("token")?
                .ok_or_else(|| CommandError::bad(id, "missing token"))?,
        },
        "ping" => Op::Ping,
        "rpc" => {
            let method = fields
                .opt_string("method")?
                .ok_or_else(|| CommandError::bad(id, "missing method"))?;
            if method.len() > MAX_METHOD_LEN {
                return Err(CommandError::bad(
                    id,
                    format!("method must be at most {MAX_METHOD_LEN} bytes"),
                ));
            }
            let data = match fields.map.get("data") {
                None => None,
                Some(data) if too_deep(data, MAX_DATA_DEPTH) => {
                    return Err(CommandError::bad(
                        id,
                        format!("data nests arrays and maps deeper than {MAX_DATA_DEPTH} levels"),
                    ));
                }
                // The backend gets JSON, whatever the client's encoding.
                Some(data) => Some(Payload::from_value(data)),
            };
            Op::Rpc { method, data }
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(CommandError::bad(id, format!("unknown op {shown:?}")));
        }
    };
    Ok(Command { id, op })
}

struct Fields {
    id: i64,
    map: Map<String, Value>,
}

impl Fields {
    fn opt_string(&self, key: &str) -> Result<Option<String>, CommandError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(CommandError::bad(
                self.id,
                format!("{key} must be a string"),
            )),
        }
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>, CommandError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                CommandError::bad(self.id, format!("{key} must be a non-negative integer"))
            }),
            Some(_) => Err(CommandError::bad(
                self.id,
                format!("{key} must be a non-negative integer"),
            )),
        }
    }

    /// `join_leave`: `"off"`, `"diff"`, `"each"`, or a boolean (`true` is `"diff"`).
    fn join_leave(&self) -> Result<Option<JoinLeave>, CommandError> {
        const WHY: &str = "join_leave must be \"off\", \"diff\", \"each\" or a boolean";
        match self.map.get("join_leave") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(true)) => Ok(Some(JoinLeave::Diff)),
            Some(Value::Bool(false)) => Ok(Some(JoinLeave::Off)),
            Some(text @ Value::String(_)) => JoinLeave::deserialize(text)
                .map(Some)
                .map_err(|_| CommandError::bad(self.id, WHY)),
            Some(_) => Err(CommandError::bad(self.id, WHY)),
        }
    }

    fn channel(&self) -> Result<String, CommandError> {
        let channel = self
            .opt_string("channel")?
            .ok_or_else(|| CommandError::bad(self.id, "missing channel"))?;
        if !valid_channel(&channel) {
            return Err(CommandError::bad(
                self.id,
                "channel must be 1..=128 bytes of [A-Za-z0-9_:.@-]",
            ));
        }
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json(v: Value) -> Result<Command, CommandError> {
        decode(Encoding::Json, v.to_string().as_bytes())
    }

    #[test]
    fn decodes_every_op_in_both_encodings() {
        let frame = json!({"id": 7, "op": "publish", "channel": "room:a", "data": {"x": [1, 2]}, "idem": "k"});
        let data = json!({"x": [1, 2]});
        let expected = Command {
            id: 7,
            op: Op::Publish {
                channel: "room:a".into(),
                data: Payload::from_value(&data),
                idem: Some("k".into()),
            },
        };
        assert_eq!(json(frame.clone()).unwrap(), expected);
        let packed = rmp_serde::to_vec_named(&frame).unwrap();
        let Op::Publish {
            data: packed_data, ..
        } = decode(Encoding::MsgPack, &packed).unwrap().op
        else {
            panic!("not a publish");
        };
        assert!(matches!(packed_data, Payload::MsgPack(_)));
        assert_eq!(packed_data.to_value().unwrap(), data);
        assert_eq!(json(json!({"id": 1, "op": "ping"})).unwrap().op, Op::Ping);
        assert_eq!(
            json(json!({"id": 1, "op": "history", "channel": "c"}))
                .unwrap()
                .op,
            Op::History {
                channel: "c".into(),
                since: None,
                before: None,
                limit: 100,
                epoch: None,
                reverse: false,
            }
        );
        assert_eq!(
            json(json!({"id": 1, "op": "subscribe", "channel": "c", "join_leave": true}))
                .unwrap()
                .op,
            Op::Subscribe {
                channel: "c".into(),
                since: None,
                epoch: None,
                join_leave: Some(JoinLeave::Diff),
                token: None,
                delta: false,
            }
        );
        for (value, mode) in [
            (json!(false), JoinLeave::Off),
            (json!("off"), JoinLeave::Off),
            (json!("diff"), JoinLeave::Diff),
            (json!("each"), JoinLeave::Each),
        ] {
            let op = json(json!({"id": 1, "op": "subscribe", "channel": "c", "join_leave": value}))
                .unwrap()
                .op;
            assert!(
                matches!(op, Op::Subscribe { join_leave: Some(m), .. } if m == mode),
                "{op:?}"
            );
        }
        assert_eq!(
            json(json!({"id": 1, "op": "presence", "channel": "c", "limit": 10, "cursor": "bob"}))
                .unwrap()
                .op,
            Op::Presence {
                channel: "c".into(),
                limit: Some(10),
                cursor: Some("bob".into()),
            }
        );
        assert_eq!(
            json(json!({"id": 1, "op": "presence_stats", "channel": "c"}))
                .unwrap()
                .op,
            Op::PresenceStats {
                channel: "c".into()
            }
        );
    }

    #[test]
    fn malformed_frames_get_id_zero() {
        for bad in [
            "nope",
            "[1]",
            "{\"op\":\"ping\"}",
            "{\"id\":\"1\",\"op\":\"ping\"}",
            "{\"id\":1.5}",
        ] {
            let err = decode(Encoding::Json, bad.as_bytes()).unwrap_err();
            assert_eq!((err.id, err.malformed), (0, true), "{bad}");
        }
        // A MessagePack `bin` value has no JSON form: refused, but the id is kept.
        let mut bin = Vec::new();
        rmp::encode::write_map_len(&mut bin, 2).unwrap();
        rmp::encode::write_str(&mut bin, "id").unwrap();
        rmp::encode::write_uint(&mut bin, 1).unwrap();
        rmp::encode::write_str(&mut bin, "data").unwrap();
        rmp::encode::write_bin(&mut bin, &[1, 2, 3]).unwrap();
        let err = decode(Encoding::MsgPack, &bin).unwrap_err();
        assert_eq!((err.id, err.malformed), (1, false));
    }

    #[test]
    fn one_depth_limit_for_both_encodings() {
        fn nested(levels: usize) -> Value {
            (0..levels).fold(json!(1), |v, _| json!([v]))
        }
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            for (levels, ok) in [(MAX_DATA_DEPTH, true), (MAX_DATA_DEPTH + 1, false)] {
                let frame =
                    json!({"id": 2, "op": "publish", "channel": "room:a", "data": nested(levels)});
                let bytes = match encoding {
                    Encoding::Json => frame.to_string().into_bytes(),
                    Encoding::MsgPack => rmp_serde::to_vec_named(&frame).unwrap(),
                    Encoding::CentrifugeJson | Encoding::CentrifugeProtobuf => unreachable!(),
                };
                let result = decode(encoding, &bytes);
                assert_eq!(result.is_ok(), ok, "{encoding:?} {levels}: {result:?}");
            }
        }
        assert_eq!(json_text_depth(br#"{"a":[1,{"b":"[[[{"}],"c\"[":[]}"#), 3);
        assert_eq!(json_text_depth(nested(70).to_string().as_bytes()), 70);
        assert_eq!(json_text_depth(b"1"), 0);
    }

    #[test]
    fn bad_fields_keep_the_id() {
        let cases = [
            json!({"id": 3, "op": "fly"}),
            json!({"id": 3, "op": "subscribe", "channel": "a b"}),
            json!({"id": 3, "op": "subscribe"}),
            json!({"id": 3, "op": "subscribe", "channel": "a", "since": -1}),
            json!({"id": 3, "op": "history", "channel": "a", "limit": 1001}),
            json!({"id": 3, "op": "publish", "channel": "a"}),
            json!({"id": 3, "op": "subscribe", "channel": "a", "join_leave": "sometimes"}),
            json!({"id": 3, "op": "subscribe", "channel": "a", "join_leave": 1}),
            json!({"id": 3, "op": "presence", "channel": "a", "limit": 0}),
            json!({"id": 3, "op": "presence", "channel": "a", "limit": 1001}),
            json!({"id": 3, "op": "presence", "channel": "a", "cursor": ""}),
        ];
        for case in cases {
            let err = json(case.clone()).unwrap_err();
            assert_eq!(
                (err.id, err.code, err.malformed),
                (3, ErrorCode::BadRequest, false),
                "{case}"
            );
        }
    }
}
