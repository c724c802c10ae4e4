//! `unsubscribe`: leave a channel the connection has.

use crate::protocol::{Answer, ErrorCode};
use crate::session::{End, Session};
use std::time::Instant;

pub(super) async fn apply(session: &mut Session, id: i64, channel: &str) -> Option<End> {
    let now = Instant::now();
    if !session.take_subscribe_token(now) {
        return session.rate_limited(id, "subscribe/unsubscribe", now);
    }
    // A subscription token's grant ends with the subscription: subscribing again takes a
    // token again.
    session.grants_mut().retain(|g| *g.channel != *channel);
    // Centrifugo's SDKs reconnect on any error to `unsubscribe`: there, leaving a channel
    // the connection does not have succeeds, as Centrifugo answers.
    if session.leave(channel).await || session.reg.conn.encoding.is_centrifuge() {
        session.answer(id, &Answer::Unsubscribed);
    } else {
        session.error(
            id,
            ErrorCode::NotSubscribed,
            "not subscribed to this channel",
        );
    }
    None
}
