//! `subscribe`: join a channel (or re-sync one already joined) and recover from `since`.

use crate::acl::{Action, JoinLeave, PERSONAL_PREFIX};
use crate::protocol::ErrorCode;
use crate::session::{End, Session};
use std::sync::Arc;
use std::time::Instant;

pub(super) async fn apply(
    session: &mut Session,
    id: i64,
    channel: String,
    since: Option<u64>,
    epoch: Option<String>,
    join_leave: Option<JoinLeave>,
) -> Option<End> {
    if !session.allowed(&channel, Action::Subscribe) {
        session.error(
            id,
            ErrorCode::Forbidden,
            "not allowed to subscribe to this channel",
        );
        return None;
    }
    let now = Instant::now();
    if !session.take_subscribe_token(now) {
        return session.rate_limited(id, "subscribe/unsubscribe", now);
    }
    let existing = session.subs.iter().find(|c| ***c == *channel).cloned();
    let channel: Arc<str> = match existing {
        // Already subscribed: a re-sync (reply and replay again, no second join); a
        // `join_leave` given changes how presence changes reach this connection.
        Some(channel) => {
            if join_leave.is_some() {
                let mode = session.reg.node.acl.join_leave(&channel, join_leave);
                session
                    .reg
                    .node
                    .hub
                    .subscribe(&channel, &session.reg.conn, mode);
            }
            session.reg.conn.begin_recovery(channel.clone());
            channel
        }
        None => {
            let max = session.reg.node.config.limits.max_subscriptions;
            // The personal channel does not count, whether or not it is still subscribed.
            let counted = session.subs.len() - usize::from(session.reg.conn.personal());
            let personal = channel
                .strip_prefix(PERSONAL_PREFIX)
                .is_some_and(|user| user == &*session.reg.conn.user);
            if counted >= max && !personal {
                session.error(
                    id,
                    ErrorCode::LimitExceeded,
                    &format!("subscription limit reached ({max} per connection)"),
                );
                return None;
            }
            let channel: Arc<str> = channel.into();
            // Buffer live publications before the hub can deliver any (join registers).
            session.reg.conn.begin_recovery(channel.clone());
            if let Err(e) = session.join(channel.clone(), join_leave).await {
                session.reg.conn.abort_recovery(&channel);
                session.broker_error(id, e);
                return None;
            }
            channel
        }
    };
    let node = session.reg.node.clone();
    if let Err(e) = node
        .recover(&session.reg.conn, id, &channel, since, epoch.as_deref())
        .await
    {
        session.broker_error(id, e);
    }
    None
}
