//! One accepted message, as it travels between nodes: no node-local state rides on it.

use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;

/// Why a payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not one well-formed value of the stated encoding.
    #[error("payload is not valid {0}")]
    Invalid(&'static str),
}

/// A message payload kept as the bytes it arrived as: JSON text or one MessagePack value.
/// It is checked once on the way in and never parsed on the fan-out path; a subscriber of the
/// other encoding gets it converted once per node (and then cached with the node's frames).
#[derive(Clone, PartialEq, Eq)]
pub enum Payload {
    /// UTF-8 JSON text of one value.
    Json(Bytes),
    /// One MessagePack value with a JSON form (no `bin` or extension types).
    MsgPack(Bytes),
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Json(b) => write!(f, "Json({})", String::from_utf8_lossy(b)),
            Payload::MsgPack(b) => write!(f, "MsgPack({} bytes)", b.len()),
        }
    }
}

impl Payload {
    /// The payload of `value` as JSON text.
    pub fn from_value(value: &Value) -> Self {
        Payload::Json(Bytes::from(
            serde_json::to_vec(value).expect("a JSON value serializes"),
        ))
    }

    /// The payload of `value` as MessagePack.
    pub fn msgpack_from_value(value: &Value) -> Self {
        Payload::MsgPack(Bytes::from(
            rmp_serde::to_vec(value).expect("a JSON value serializes as MessagePack"),
        ))
    }

    /// Size in bytes as held.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// True for an empty byte string (never for a checked payload).
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// The bytes as held, whatever the encoding.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Payload::Json(b) | Payload::MsgPack(b) => b,
        }
    }

    /// One-byte tag of the encoding, for envelopes: `j` or `m`.
    pub fn tag(&self) -> u8 {
        match self {
            Payload::Json(_) => b'j',
            Payload::MsgPack(_) => b'm',
        }
    }

    /// Rebuilds a payload from an envelope's tag and bytes.
    pub fn from_tagged(tag: u8, bytes: Bytes) -> Result<Self, PayloadError> {
        match tag {
            b'j' => Ok(Payload::Json(bytes)),
            b'm' => Ok(Payload::MsgPack(bytes)),
            _ => Err(PayloadError::Invalid("payload tag")),
        }
    }

    /// The payload as JSON text (converted when held as MessagePack).
    pub fn to_json(&self) -> Result<Bytes, PayloadError> {
        match self {
            Payload::Json(b) => Ok(b.clone()),
            Payload::MsgPack(b) => {
                let value: Value =
                    rmp_serde::from_slice(b).map_err(|_| PayloadError::Invalid("MessagePack"))?;
                Ok(Bytes::from(
                    serde_json::to_vec(&value).expect("a JSON value serializes"),
                ))
            }
        }
    }

    /// The payload as MessagePack (converted when held as JSON).
    pub fn to_msgpack(&self) -> Result<Bytes, PayloadError> {
        match self {
            Payload::MsgPack(b) => Ok(b.clone()),
            Payload::Json(b) => {
                let value: Value =
                    serde_json::from_slice(b).map_err(|_| PayloadError::Invalid("JSON"))?;
                Ok(Payload::msgpack_from_value(&value).bytes().clone())
            }
        }
    }

    /// The payload as a JSON value (for tests and tools; never on the fan-out path).
    pub fn to_value(&self) -> Result<Value, PayloadError> {
        match self {
            Payload::Json(b) => {
                serde_json::from_slice(b).map_err(|_| PayloadError::Invalid("JSON"))
            }
            Payload::MsgPack(b) => {
                rmp_serde::from_slice(b).map_err(|_| PayloadError::Invalid("MessagePack"))
            }
        }
    }
}

/// A message accepted on a channel: its place in the channel (offset within epoch), its
/// author, payload and acceptance time. This is what brokers move between nodes; a node wraps
/// it with what only it needs (receive instant, encoded frames).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The channel it was published to.
    pub channel: Arc<str>,
    /// Position in the channel, starting at 1, contiguous within one epoch.
    pub offset: u64,
    /// Generation of the channel's history that `offset` belongs to.
    pub epoch: Arc<str>,
    /// User id of the publisher (`"server"` for the HTTP API).
    pub from: Arc<str>,
    /// The payload.
    pub data: Payload,
    /// Acceptance time, Unix milliseconds (the accepting node's clock).
    pub ts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_convert_between_encodings() {
        let v = json!({"text": "hi", "n": [1, 2.5, null, -3], "nested": {"a": true}});
        let j = Payload::from_value(&v);
        let m = Payload::msgpack_from_value(&v);
        assert_eq!(j.to_value().unwrap(), v);
        assert_eq!(m.to_value().unwrap(), v);
        let j2: Value = serde_json::from_slice(&m.to_json().unwrap()).unwrap();
        assert_eq!(j2, v);
        let m2: Value = rmp_serde::from_slice(&j.to_msgpack().unwrap()).unwrap();
        assert_eq!(m2, v);
        assert_eq!(Payload::from_tagged(j.tag(), j.bytes().clone()).unwrap(), j);
        assert!(Payload::from_tagged(b'x', Bytes::new()).is_err());
    }

    /// Found by the `command` fuzz target: without serde_json's `float_roundtrip`, a float
    /// read from JSON text could differ from the sent one in its last digit, so a MessagePack
    /// subscriber got another number than the JSON publisher sent.
    #[test]
    fn floats_cross_encodings_exactly() {
        for text in [
            "-4.946608043337584e173",
            "0.1",
            "2.2250738585072014e-308",
            "1.7976931348623157e308",
        ] {
            let exact: f64 = text.parse().unwrap();
            let packed = Payload::Json(Bytes::from(text.to_string()))
                .to_msgpack()
                .unwrap();
            let back: f64 = rmp_serde::from_slice(&packed).unwrap();
            assert_eq!(back.to_bits(), exact.to_bits(), "{text}");
            let json = Payload::MsgPack(packed).to_json().unwrap();
            let again: f64 = std::str::from_utf8(&json).unwrap().parse().unwrap();
            assert_eq!(again.to_bits(), exact.to_bits(), "{text}");
        }
    }
}
