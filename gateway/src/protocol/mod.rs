//! The wire protocol: encodings, commands, replies, pushes, error and close codes.

pub mod centrifuge;
mod command;
mod frames;

pub use command::{
    Command, CommandError, DEFAULT_HISTORY_LIMIT, MAX_DATA_DEPTH, MAX_HISTORY_LIMIT, MAX_IDEM_LEN,
    MAX_PRESENCE_LIMIT, Op, check_presence_page, decode, json_text_depth,
};
pub use frames::{
    Answer, HistoryReply, PresencePage, SubscribeAnswer, answer_frame, control_frame,
    disconnect_frame, error_frame, frame_bytes, history_body, history_reply_frame, members_json,
    message_frame, presence_diff_frame, publish_error_frame, put_frame, refresh_frame,
    server_subscribe_frame, subscribe_reply_frame, to_message, unsubscribe_frame, welcome_frame,
};

/// A connection's wire encoding, chosen by subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `v1.json`: text frames holding JSON objects.
    Json,
    /// `v1.msgpack`: binary frames holding MessagePack maps.
    MsgPack,
    /// Centrifugo's client protocol, JSON (`/connection/websocket`): text frames of
    /// newline-separated objects (see [`centrifuge`]).
    CentrifugeJson,
    /// Centrifugo's client protocol, Protobuf (`centrifuge-protobuf`): binary frames of
    /// varint-delimited messages.
    CentrifugeProtobuf,
}

impl Encoding {
    /// How many encodings there are (the size of per-encoding frame caches).
    pub const COUNT: usize = 4;

    /// The subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "v1.json",
            Encoding::MsgPack => "v1.msgpack",
            Encoding::CentrifugeJson => "centrifuge-json",
            Encoding::CentrifugeProtobuf => "centrifuge-protobuf",
        }
    }

    /// Whether this is Centrifugo's protocol (else our v1).
    pub fn is_centrifuge(self) -> bool {
        matches!(
            self,
            Encoding::CentrifugeJson | Encoding::CentrifugeProtobuf
        )
    }

    /// Whether frames are text (else binary).
    pub fn is_text(self) -> bool {
        !matches!(self, Encoding::MsgPack | Encoding::CentrifugeProtobuf)
    }

    /// Picks the encoding from the offered subprotocols: the first known one; `v1.json` when
    /// none is offered; `None` when only unknown ones are.
    pub fn negotiate<'a>(offered: impl Iterator<Item = &'a str>) -> Option<Option<Encoding>> {
        let mut any = false;
        for p in offered.flat_map(|h| h.split(',')).map(str::trim) {
            if p.is_empty() {
                continue;
            }
            any = true;
            match p {
                "v1.json" => return Some(Some(Encoding::Json)),
                "v1.msgpack" => return Some(Some(Encoding::MsgPack)),
                _ => {}
            }
        }
        if any { None } else { Some(None) }
    }

    /// Slot of this encoding in a publication's frame cache.
    pub fn slot(self) -> usize {
        match self {
            Encoding::Json => 0,
            Encoding::MsgPack => 1,
            Encoding::CentrifugeJson => 2,
            Encoding::CentrifugeProtobuf => 3,
        }
    }
}

/// Error codes of replies and of the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed frame, unknown op, bad field.
    BadRequest,
    /// Invalid credentials.
    Unauthorized,
    /// Not allowed (ACL or a limit).
    Forbidden,
    /// Not subscribed to the channel.
    NotSubscribed,
    /// Too many requests.
    RateLimited,
    /// Too large.
    TooLarge,
    /// A backend is down; retry later.
    Unavailable,
    /// Server error.
    Internal,
    /// A per-connection limit (subscriptions) reached: `forbidden` in v1.
    LimitExceeded,
    /// An RPC method nobody serves (Centrifugo's `rpc`).
    MethodNotFound,
    /// A feature this server does not offer (some of Centrifugo's server API methods).
    NotAvailable,
    /// The token expired: fetch a new one and retry (Centrifugo's connect).
    TokenExpired,
    /// A history position in another epoch (Centrifugo's `history` with `since`).
    UnrecoverablePosition,
    /// The app's backend refused, with its own code (a proxy's `error` answer): passed as it
    /// is in Centrifugo's protocol; in v1 as `unauthorized` (101, 109), `forbidden` (103) or
    /// `rejected`, with the code in `backend_code`.
    Backend {
        /// The backend's code.
        code: u32,
        /// Whether the backend said to retry (Centrifugo's `temporary`).
        temporary: bool,
    },
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::LimitExceeded => "forbidden",
            ErrorCode::MethodNotFound => "method_not_found",
            ErrorCode::NotAvailable => "not_available",
            ErrorCode::TokenExpired => "unauthorized",
            ErrorCode::UnrecoverablePosition => "unrecoverable_position",
            ErrorCode::Backend {
                code: 101 | 109, ..
            } => "unauthorized",
            ErrorCode::Backend { code: 103, .. } => "forbidden",
            ErrorCode::Backend { .. } => "rejected",
        }
    }
}

impl From<&fanout::BrokerError> for ErrorCode {
    fn from(error: &fanout::BrokerError) -> Self {
        match error {
            fanout::BrokerError::Unavailable(_)
            | fanout::BrokerError::OutcomeUnknown(_)
            | fanout::BrokerError::DedupFull => ErrorCode::Unavailable,
            fanout::BrokerError::Backend(_) => ErrorCode::Internal,
        }
    }
}

impl From<&presence::PresenceError> for ErrorCode {
    fn from(error: &presence::PresenceError) -> Self {
        match error {
            presence::PresenceError::Unavailable(_) => ErrorCode::Unavailable,
            presence::PresenceError::Backend(_) => ErrorCode::Internal,
        }
    }
}

impl From<&presence::RegistryError> for ErrorCode {
    fn from(error: &presence::RegistryError) -> Self {
        match error {
            presence::RegistryError::Unavailable(_) => ErrorCode::Unavailable,
            presence::RegistryError::Backend(_) => ErrorCode::Internal,
        }
    }
}

/// Why the server ended a subscription (the `unsubscribe` push).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsubscribeReason {
    /// The node lost messages of the channel it could not heal (history no longer held
    /// them, or the channel's epoch changed): subscribe again with `since` to learn whether
    /// anything is missing (`recovered: false` says reload).
    InsufficientState,
    /// A backend asked (`POST /api/unsubscribe`).
    Server,
    /// A `refresh` to a token that no longer grants the channel.
    Forbidden,
    /// The subscription token expired without a `sub_refresh`: subscribe again with a new
    /// one.
    Expired,
}

impl UnsubscribeReason {
    /// The push's `code`.
    pub fn code(self) -> &'static str {
        match self {
            UnsubscribeReason::InsufficientState => "insufficient_state",
            UnsubscribeReason::Server => "unsubscribed",
            UnsubscribeReason::Forbidden => "forbidden",
            UnsubscribeReason::Expired => "expired",
        }
    }

    /// Whether the client should subscribe again.
    pub fn resubscribe(self) -> bool {
        matches!(
            self,
            UnsubscribeReason::InsufficientState | UnsubscribeReason::Expired
        )
    }
}

/// Why the server closes a connection: the `disconnect` push code and the close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Protocol abuse (too many malformed frames).
    Policy,
    /// A frame over the maximum size.
    TooLarge,
    /// Server error.
    Internal,
    /// Node draining.
    Shutdown,
    /// Token expired without refresh.
    TokenExpired,
    /// Outbound queue overflowed.
    SlowConsumer,
    /// Sustained rate-limit violations.
    RateLimited,
    /// No frame within the idle timeout.
    HeartbeatTimeout,
    /// A backend asked (`POST /api/disconnect`); the flag says whether to reconnect.
    Disconnected {
        /// Whether the client should reconnect.
        reconnect: bool,
    },
}

impl CloseReason {
    /// The `disconnect.code` string.
    pub fn code(self) -> &'static str {
        match self {
            CloseReason::Policy => "policy",
            CloseReason::TooLarge => "too_large",
            CloseReason::Internal => "internal",
            CloseReason::Shutdown => "shutdown",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::Disconnected { .. } => "disconnected",
        }
    }

    /// The WebSocket close code.
    pub fn close_code(self) -> u16 {
        match self {
            CloseReason::Policy => 1008,
            CloseReason::TooLarge => 1009,
            CloseReason::Internal => 1011,
            CloseReason::Shutdown => 1012,
            CloseReason::TokenExpired => 4001,
            CloseReason::SlowConsumer => 4002,
            CloseReason::RateLimited => 4003,
            CloseReason::HeartbeatTimeout => 4004,
            CloseReason::Disconnected { .. } => 4005,
        }
    }

    /// Whether reconnecting makes sense.
    pub fn reconnect(self) -> bool {
        match self {
            CloseReason::Policy | CloseReason::TooLarge => false,
            CloseReason::Disconnected { reconnect } => reconnect,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_negotiation() {
        assert_eq!(Encoding::negotiate([].into_iter()), Some(None));
        assert_eq!(
            Encoding::negotiate(["x, v1.msgpack"].into_iter()),
            Some(Some(Encoding::MsgPack))
        );
        assert_eq!(
            Encoding::negotiate(["v1.json", "v1.msgpack"].into_iter()),
            Some(Some(Encoding::Json))
        );
        assert_eq!(Encoding::negotiate(["chat"].into_iter()), None);
    }
}
