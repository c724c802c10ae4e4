//! `subscribe`: join a channel (or re-sync one already joined) and recover from `since`;
//! and `sub_refresh`, which extends a subscription token's grant.

use crate::acl::{Action, JoinLeave, PERSONAL_PREFIX};
use crate::node::Recovery;
use crate::protocol::{Answer, ErrorCode};
use crate::proxy::Kind;
use crate::proxy::wire::{ChannelFields, SubscribeResult};
use crate::session::{End, Grant, Session, expiry_instant, proxied};
use std::sync::Arc;
use std::time::Instant;

/// What a subscribe asks for.
pub(super) struct Request {
    pub channel: String,
    pub since: Option<u64>,
    pub epoch: Option<String>,
    pub join_leave: Option<JoinLeave>,
    /// A subscription token for the channel.
    pub token: Option<String>,
    /// Fossil deltas asked for.
    pub delta: bool,
}

/// Checks a subscription token for `channel`: its expiry (Unix seconds) when it grants the
/// channel to this connection's user, else the error to answer (109 for an expired token,
/// so that the SDKs fetch a new one; 103 for anything else).
fn check_token(
    session: &Session,
    channel: &str,
    token: &str,
) -> Result<Option<u64>, (ErrorCode, &'static str)> {
    match session.reg.node.verifier.verify_subscription(token) {
        Err(e) if e.is_expired() => Err((ErrorCode::TokenExpired, "subscription token expired")),
        Err(e) => {
            tracing::debug!(reason = %e, "subscription token refused");
            Err((ErrorCode::Forbidden, "invalid subscription token"))
        }
        Ok(claims) if *claims.sub != *session.reg.conn.user => Err((
            ErrorCode::Forbidden,
            "the subscription token is for another user",
        )),
        Ok(claims) if claims.channel != channel => Err((
            ErrorCode::Forbidden,
            "the subscription token is for another channel",
        )),
        Ok(claims) => Ok(claims.exp),
    }
}

/// Records (or renews) a grant of `channel`: by a subscription token, or by the subscribe
/// proxy (`proxied`).
fn grant(session: &mut Session, channel: &str, exp: Option<u64>, proxied: bool) {
    let expires_at = exp.map(|exp| expiry_instant(&session.reg.node, exp));
    match session
        .grants_mut()
        .iter_mut()
        .find(|g| *g.channel == *channel)
    {
        Some(g) => {
            g.expires_at = expires_at;
            g.exp = exp;
            g.proxied = proxied;
        }
        None => session.grants_mut().push(Grant {
            channel: channel.into(),
            expires_at,
            exp,
            proxied,
        }),
    }
}

/// Asks the subscribe proxy whether the connection may subscribe to `channel`, and records
/// the grant it gives (with its `expire_at`, extended by the sub_refresh proxy). `Err`: the
/// client has its answer (`Some`: and the session ends).
async fn ask_backend(session: &mut Session, id: i64, channel: &str) -> Result<(), Option<End>> {
    let answer = session
        .ask::<SubscribeResult>(Kind::Subscribe, ChannelFields { channel })
        .await;
    let result = session.backend_result(id, answer)?;
    match proxied::deadline(&session.reg.node, result.expire_at) {
        Ok(at) => {
            grant(session, channel, at.map(|(_, exp)| exp), true);
            Ok(())
        }
        Err(()) => {
            session.error(id, ErrorCode::Forbidden, "the backend's grant has expired");
            Err(None)
        }
    }
}

/// `sub_refresh`: a new subscription token for a channel the connection holds by one.
pub(super) fn refresh(session: &mut Session, id: i64, channel: &str, token: &str) -> Option<End> {
    if !session.grants().iter().any(|g| *g.channel == *channel) {
        session.error(
            id,
            ErrorCode::Forbidden,
            "no subscription by token to this channel",
        );
        return None;
    }
    match check_token(session, channel, token) {
        Err((code, why)) => session.error(id, code, why),
        Ok(exp) => {
            grant(session, channel, exp, false);
            // No expiry: the answer says a distant one, which the SDKs never act on.
            let exp = exp.unwrap_or(u64::from(u32::MAX));
            session.answer(id, &Answer::SubRefreshed { exp });
        }
    }
    None
}

/// Whether a subscribe to `channel` (not yet held) is the subscribe proxy's to decide.
fn node_proxies_subscribe(session: &Session, channel: &str) -> bool {
    session.reg.node.acl.proxied(channel, Action::Subscribe)
        && !session.subs.iter().any(|c| **c == *channel)
}

pub(super) async fn apply(session: &mut Session, id: i64, request: Request) -> Option<End> {
    let Request {
        channel,
        since,
        epoch,
        join_leave,
        token,
        delta,
    } = request;
    // The subscribe proxy decides a new subscription in its namespaces, without a token: it
    // is asked last, once the rate and the subscription limit let the subscribe through.
    let proxied = token.is_none() && node_proxies_subscribe(session, &channel);
    if let Some(token) = token {
        match check_token(session, &channel, &token) {
            Err((code, why)) => {
                session.error(id, code, why);
                return None;
            }
            Ok(exp) => grant(session, &channel, exp, false),
        }
    }
    // A subscription by token expires with it: the reply says when. One the subscribe proxy
    // granted is extended by the server (the sub_refresh proxy): the client is not told.
    let expires = session
        .grants()
        .iter()
        .find(|g| *g.channel == *channel && !g.proxied)
        .and_then(|g| g.exp);
    if !proxied && !session.allowed(&channel, Action::Subscribe) {
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
            if proxied && let Err(end) = ask_backend(session, id, &channel).await {
                return end;
            }
            let channel: Arc<str> = channel.into();
            // Buffer live publications before the hub can deliver any (join registers).
            session.reg.conn.begin_recovery(channel.clone());
            if let Err(e) = session.join(channel.clone(), join_leave).await {
                session.reg.conn.abort_recovery(&channel);
                if proxied {
                    // Not subscribed: the backend's grant goes (nothing to refresh).
                    session.grants_mut().retain(|g| g.channel != channel);
                }
                session.broker_error(id, e);
                return None;
            }
            channel
        }
    };
    let node = session.reg.node.clone();
    // Deltas where the namespace allows them; the reply says whether they are on.
    let delta = delta && node.acl.delta_allowed(&channel);
    if delta {
        node.hub.keep_last(&channel);
    }
    let wanted = Recovery {
        since,
        epoch: epoch.as_deref(),
        expires,
        delta,
    };
    let recovered = node.recover(&session.reg.conn, id, &channel, wanted).await;
    match recovered {
        // The client's base for the next delta: the last publication in the reply, which
        // the node's next delta on the channel may start from if it has none yet.
        Ok(base) => {
            if delta && let Some(base) = &base {
                node.hub.seed_last(&channel, base);
            }
            session.set_delta(&channel, delta.then_some(base.map(|p| p.offset)));
        }
        Err(e) => {
            session.set_delta(&channel, None);
            session.broker_error(id, e);
        }
    }
    None
}
