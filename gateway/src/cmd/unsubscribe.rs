//! `unsubscribe`: leave a channel the connection has.

use crate::protocol::ErrorCode;
use crate::session::{End, Session};
use serde_json::json;

pub(super) async fn apply(session: &mut Session, id: i64, channel: &str) -> Option<End> {
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
