//! `publish`: ACL (or the publish proxy, which may also rewrite the data), the connection's
//! token bucket, then the broker.

use crate::acl::Action;
use crate::protocol::{Answer, ErrorCode};
use crate::proxy::wire::{PublishFields, PublishResult};
use crate::proxy::{self, Kind};
use crate::session::{End, Session};
use fanout::{Payload, PublishRequest};
use serde_json::value::RawValue;
use std::time::Instant;

pub(super) async fn apply(
    session: &mut Session,
    id: i64,
    channel: String,
    data: Payload,
    idem: Option<String>,
) -> Option<End> {
    let proxied = session.reg.node.acl.proxied(&channel, Action::Publish);
    if !proxied && !session.allowed(&channel, Action::Publish) {
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
    let mut data = data;
    if proxied {
        match ask_backend(session, id, &channel, &data).await {
            Ok(Some(replaced)) => data = replaced,
            Ok(None) => {}
            Err(end) => return end,
        }
    }
    // A client event for the webhooks, when they ask for them on this channel.
    let event = wants_client_event(session, &channel).then(|| (channel.clone(), data.clone()));
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
                if let Some((channel, data)) = event {
                    record_client_event(session, &channel, &data).await;
                }
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

/// Asks the publish proxy: `Ok(Some)` with the data to publish instead, `Ok(None)` to publish
/// as sent, `Err` when refused (the client has its answer; `Some` ends the session).
async fn ask_backend(
    session: &mut Session,
    id: i64,
    channel: &str,
    data: &Payload,
) -> Result<Option<Payload>, Option<End>> {
    // The backend reads JSON, whatever the client's encoding.
    let json = data.to_json().ok();
    let Some(raw) = json
        .as_deref()
        .and_then(|j| serde_json::from_slice::<&RawValue>(j).ok())
    else {
        session.error(id, ErrorCode::BadRequest, "data has no JSON form");
        return Err(None);
    };
    let fields = PublishFields { channel, data: raw };
    let answer = session.ask::<PublishResult>(Kind::Publish, fields).await;
    let result = session.backend_result(id, answer)?;
    match proxy::answer_data(result.data, result.b64data) {
        Ok(replaced) => Ok(replaced.map(Payload::Json)),
        Err(e) => {
            tracing::warn!(error = %e, "publish proxy answered unusable data");
            session.error(id, ErrorCode::Unavailable, e.client_message());
            Err(None)
        }
    }
}

/// Whether the webhooks want client events on `channel`.
fn wants_client_event(session: &Session, channel: &str) -> bool {
    let node = &session.reg.node;
    node.config
        .webhook
        .as_ref()
        .is_some_and(|w| w.events.contains(&presence::FeedKind::ClientEvent))
        && node.acl.webhooks_enabled(channel)
}

/// Records a client's publication in the webhooks' feed (after it was published: a refused
/// publish is no event). A failure is logged: the publish itself succeeded.
async fn record_client_event(session: &Session, channel: &str, data: &Payload) {
    let json = match data.to_json() {
        Ok(json) => json,
        Err(e) => {
            tracing::warn!(error = %e, "client event not recorded");
            return;
        }
    };
    let text = String::from_utf8_lossy(&json);
    let presence = &session.reg.node.presence;
    if let Err(e) = presence
        .feed_client_event(channel, &session.reg.conn.user, &text)
        .await
    {
        tracing::warn!(error = %e, "client event not recorded");
    }
}
