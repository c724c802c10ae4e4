//! `unsubscribe`: leave a channel the connection has.

use crate::protocol::ErrorCode;
use crate::session::{End, Session};
use serde_json::json;
use std::time::Instant;

pub(super) async fn apply(session: &mut Session, id: i64, channel: &str) -> Option<End> {
    let now = Instant::now();
    if !session.take_subscribe_token(now) {
        return session.rate_limited(id, "subscribe/unsubscribe", now);
    }
    if session.leave(channel).await {
        session.reply(id, &json!({}));
    } else {
        session.error(
            id,
            ErrorCode::NotSubscribed,
            "not subscribed to this channel",
        );
    }
    None
}
