//! `publish`: ACL, the connection's token bucket, then the broker.

use crate::acl::Action;
use crate::protocol::{Answer, ErrorCode};
use crate::session::{End, Session};
use fanout::{Payload, PublishRequest};
use std::time::Instant;

pub(super) async fn apply(
    session: &mut Session,
    id: i64,
    channel: String,
    data: Payload,
    idem: Option<String>,
) -> Option<End> {
    if !session.allowed(&channel, Action::Publish) {
        session.error(
            id,
            ErrorCode::Forbidden,
            "not allowed to publish on this channel",
        );
        return None;
    }
    let now = Instant::now();
    let limits = &session.reg.node.config.limits;
    let (rate, burst) = (limits.publish_rate, limits.publish_burst);
    if !session.bucket.try_take(now, rate, burst) {
        return session.rate_limited(id, "publish", now);
    }
    let request = PublishRequest {
        archive: session.reg.node.acl.archive_enabled(&channel),
        channel: channel.into(),
        from: session.reg.conn.user.clone(),
        data,
        idem,
    };
    match session.reg.node.broker.publish(request).await {
        Ok(outcome) => {
            if !outcome.duplicate {
                session.reg.node.hub.count_published();
            }
            session.answer(
                id,
                &Answer::Published {
                    offset: outcome.offset,
                    epoch: &outcome.epoch,
                },
            );
        }
        Err(e) => session.publish_error(id, &e),
    }
    None
}
