//! What travels on Redis pub/sub: MessagePack arrays whose first element says what they are.
//!
//! - `["m", channel, offset, epoch, from, ts, tag, data]`: a publication (built by the publish
//!   script, so that offset and epoch come from the same atomic step; also the stream entry);
//! - `["j" | "l", channel, user]`: a presence join or leave;
//! - `["c", request, kind, user, arg]` on the control channel: a node command (`kind` `d`
//!   disconnect with `arg` "1" to reconnect, `u` unsubscribe from channel `arg`, `ch` report
//!   the channels whose name contains `user`, `st` report the node's counters);
//! - `["r", request, reply]` on the requesting broker's reply channel: one node's answer to
//!   a node command (`reply`: [`crate::CommandReply`] as JSON).

use crate::{ControlEvent, NodeCommand, Payload, Publication};
use bytes::Bytes;
use rmp::decode::{self as mpd, RmpRead};
use rmp::encode as mpe;
use std::sync::Arc;

/// A decoded envelope.
#[derive(Debug, PartialEq)]
pub(crate) enum Envelope {
    Publication(Publication),
    Control(ControlEvent),
    Command {
        request: String,
        command: NodeCommand,
    },
    Reply {
        request: String,
        reply: String,
    },
}

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error)]
#[error("bad envelope: {0}")]
pub(crate) struct BadEnvelope(pub &'static str);

fn read_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], BadEnvelope> {
    let marker = mpd::read_marker(input).map_err(|_| BadEnvelope("truncated"))?;
    let len = match marker {
        rmp::Marker::FixStr(n) => n as usize,
        rmp::Marker::Str8 | rmp::Marker::Bin8 => {
            input.read_data_u8().map_err(|_| BadEnvelope("len"))? as usize
        }
        rmp::Marker::Str16 | rmp::Marker::Bin16 => {
            input.read_data_u16().map_err(|_| BadEnvelope("len"))? as usize
        }
        rmp::Marker::Str32 | rmp::Marker::Bin32 => {
            input.read_data_u32().map_err(|_| BadEnvelope("len"))? as usize
        }
        _ => return Err(BadEnvelope("expected a string")),
    };
    if input.len() < len {
        return Err(BadEnvelope("truncated string"));
    }
    let (bytes, rest) = input.split_at(len);
    *input = rest;
    Ok(bytes)
}

fn read_str<'a>(input: &mut &'a [u8]) -> Result<&'a str, BadEnvelope> {
    std::str::from_utf8(read_bytes(input)?).map_err(|_| BadEnvelope("not UTF-8"))
}

fn read_u64(input: &mut &[u8]) -> Result<u64, BadEnvelope> {
    mpd::read_int(input).map_err(|_| BadEnvelope("expected an integer"))
}

/// Decodes an envelope; `raw` is the whole message (payload bytes are sliced from it).
pub(crate) fn decode(raw: &Bytes) -> Result<Envelope, BadEnvelope> {
    let mut input: &[u8] = raw;
    let len = mpd::read_array_len(&mut input).map_err(|_| BadEnvelope("not an array"))?;
    let kind = read_str(&mut input)?;
    match (kind, len) {
        ("m", 8) => {
            let channel = read_str(&mut input)?;
            let offset = read_u64(&mut input)?;
            let epoch = read_str(&mut input)?;
            let from = read_str(&mut input)?;
            let ts = read_u64(&mut input)?;
            let tag = read_bytes(&mut input)?;
            let data = read_bytes(&mut input)?;
            let data = raw.slice_ref(data);
            let tag = *tag.first().ok_or(BadEnvelope("empty tag"))?;
            Ok(Envelope::Publication(Publication {
                channel: channel.into(),
                offset,
                epoch: epoch.into(),
                from: from.into(),
                data: Payload::from_tagged(tag, data).map_err(|_| BadEnvelope("tag"))?,
                ts,
            }))
        }
        ("j" | "l", 3) => {
            let channel: Arc<str> = read_str(&mut input)?.into();
            let user: Arc<str> = read_str(&mut input)?.into();
            Ok(Envelope::Control(if kind == "j" {
                ControlEvent::Join { channel, user }
            } else {
                ControlEvent::Leave { channel, user }
            }))
        }
        ("c", 5) => {
            let request = read_str(&mut input)?.to_owned();
            let what = read_str(&mut input)?;
            let user = read_str(&mut input)?.to_owned();
            let arg_bytes = read_bytes(&mut input)?;
            if what == "em" {
                // Commands for an emulated session: the bytes as they came (Protobuf is
                // binary).
                let command = NodeCommand::Emulate {
                    session: user,
                    data: Bytes::copy_from_slice(arg_bytes),
                };
                return Ok(Envelope::Command { request, command });
            }
            let arg = std::str::from_utf8(arg_bytes).map_err(|_| BadEnvelope("not UTF-8"))?;
            let command = match what {
                "d" => NodeCommand::Disconnect {
                    user,
                    reconnect: arg == "1",
                },
                "u" => NodeCommand::Unsubscribe {
                    user,
                    channel: arg.to_owned(),
                },
                "s" => NodeCommand::Subscribe {
                    user,
                    channel: arg.to_owned(),
                },
                "rf" => NodeCommand::Refresh {
                    user,
                    expire_at: arg.parse().ok(),
                    expired: arg == "expired",
                },
                "ch" => NodeCommand::Channels { filter: user },
                "st" => NodeCommand::Stats,
                _ => return Err(BadEnvelope("unknown command")),
            };
            Ok(Envelope::Command { request, command })
        }
        ("r", 3) => {
            let request = read_str(&mut input)?.to_owned();
            let reply = read_str(&mut input)?.to_owned();
            Ok(Envelope::Reply { request, reply })
        }
        _ => Err(BadEnvelope("unknown kind")),
    }
}

fn array(parts: &[&[u8]]) -> Bytes {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 5).sum::<usize>() + 5);
    // Writing to a Vec cannot fail.
    let _ = mpe::write_array_len(&mut out, parts.len() as u32);
    for part in parts {
        let _ = mpe::write_str_len(&mut out, part.len() as u32);
        out.extend_from_slice(part);
    }
    Bytes::from(out)
}

/// Encodes a join or leave.
pub(crate) fn control(event: &ControlEvent) -> Bytes {
    let (kind, channel, user) = match event {
        ControlEvent::Join { channel, user } => ("j", channel, user),
        ControlEvent::Leave { channel, user } => ("l", channel, user),
    };
    array(&[kind.as_bytes(), channel.as_bytes(), user.as_bytes()])
}

/// Encodes a node command with its request id.
pub(crate) fn command(request: &str, command: &NodeCommand) -> Bytes {
    let expiry;
    let (what, user, arg) = match command {
        NodeCommand::Disconnect { user, reconnect } => {
            ("d", user.as_str(), if *reconnect { "1" } else { "0" })
        }
        NodeCommand::Unsubscribe { user, channel } => ("u", user.as_str(), channel.as_str()),
        NodeCommand::Subscribe { user, channel } => ("s", user.as_str(), channel.as_str()),
        NodeCommand::Refresh {
            user,
            expire_at,
            expired,
        } => {
            // "expired", the Unix second, or empty for no expiry.
            expiry = match (expired, expire_at) {
                (true, _) => "expired".to_owned(),
                (false, Some(at)) => at.to_string(),
                (false, None) => String::new(),
            };
            ("rf", user.as_str(), expiry.as_str())
        }
        NodeCommand::Channels { filter } => ("ch", filter.as_str(), ""),
        NodeCommand::Stats => ("st", "", ""),
        NodeCommand::Emulate { session, data } => {
            return array(&[b"c", request.as_bytes(), b"em", session.as_bytes(), data]);
        }
    };
    array(&[
        b"c",
        request.as_bytes(),
        what.as_bytes(),
        user.as_bytes(),
        arg.as_bytes(),
    ])
}

/// Encodes one node's answer to a node command.
pub(crate) fn reply(request: &str, reply: &str) -> Bytes {
    array(&[b"r", request.as_bytes(), reply.as_bytes()])
}

/// Encodes a publication the way the publish script does (for tests and fuzzing).
pub(crate) fn publication(p: &Publication) -> Bytes {
    let mut out = Vec::new();
    let _ = mpe::write_array_len(&mut out, 8);
    let _ = mpe::write_str(&mut out, "m");
    let _ = mpe::write_str(&mut out, &p.channel);
    let _ = mpe::write_uint(&mut out, p.offset);
    let _ = mpe::write_str(&mut out, &p.epoch);
    let _ = mpe::write_str(&mut out, &p.from);
    let _ = mpe::write_uint(&mut out, p.ts);
    let _ = mpe::write_str(&mut out, std::str::from_utf8(&[p.data.tag()]).unwrap());
    let _ = mpe::write_str_len(&mut out, p.data.len() as u32);
    out.extend_from_slice(p.data.bytes());
    Bytes::from(out)
}

/// Decodes a pub/sub envelope as a node does on receipt (for fuzzing): `Err` when it is not
/// well-formed. A publication that decodes must re-encode to bytes that decode to the same
/// publication: anything else panics (the fuzzer's finding).
#[doc(hidden)]
pub fn check_envelope(raw: &[u8]) -> Result<(), String> {
    let raw = Bytes::copy_from_slice(raw);
    match decode(&raw).map_err(|e| e.to_string())? {
        Envelope::Publication(p) => {
            let encoded = publication(&p);
            let again = decode(&encoded)
                .unwrap_or_else(|e| panic!("a re-encoded publication does not decode: {e}; {p:?}"));
            assert_eq!(again, Envelope::Publication(p));
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let p = Publication {
            channel: "room:a".into(),
            offset: 70_000,
            epoch: "e1".into(),
            from: "bob".into(),
            data: Payload::msgpack_from_value(&serde_json::json!({"k": [1, "x"]})),
            ts: 1_795_545_445_378,
        };
        assert_eq!(decode(&publication(&p)).unwrap(), Envelope::Publication(p));
        let join = ControlEvent::Join {
            channel: "room:a".into(),
            user: "ann".into(),
        };
        assert_eq!(decode(&control(&join)).unwrap(), Envelope::Control(join));
        for cmd in [
            NodeCommand::Unsubscribe {
                user: "ann".into(),
                channel: "room:b".into(),
            },
            NodeCommand::Disconnect {
                user: "ann".into(),
                reconnect: true,
            },
            NodeCommand::Channels {
                filter: "room".into(),
            },
            NodeCommand::Stats,
            NodeCommand::Subscribe {
                user: "ann".into(),
                channel: "room:c".into(),
            },
            NodeCommand::Refresh {
                user: "ann".into(),
                expire_at: Some(1_795_545_445),
                expired: false,
            },
            NodeCommand::Refresh {
                user: "ann".into(),
                expire_at: None,
                expired: false,
            },
            NodeCommand::Refresh {
                user: "ann".into(),
                expire_at: None,
                expired: true,
            },
            NodeCommand::Emulate {
                session: "5f3c".into(),
                // Protobuf commands are binary, not UTF-8.
                data: Bytes::from_static(&[0x0b, 0x08, 0x02, 0xff, 0x00]),
            },
        ] {
            assert_eq!(
                decode(&command("r1", &cmd)).unwrap(),
                Envelope::Command {
                    request: "r1".into(),
                    command: cmd
                }
            );
        }
        assert_eq!(
            decode(&reply("r1", r#"{"count":3}"#)).unwrap(),
            Envelope::Reply {
                request: "r1".into(),
                reply: r#"{"count":3}"#.into()
            }
        );
        assert!(decode(&Bytes::from_static(b"\x91\xa1z")).is_err());
        assert!(decode(&Bytes::from_static(b"")).is_err());
    }
}
