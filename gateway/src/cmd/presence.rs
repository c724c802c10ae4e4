//! `presence` and `presence_stats`: the members of a presence-enabled channel, merged across
//! nodes, a page at a time; or only how many there are.

use crate::acl::Action;
use crate::protocol::{Answer, ErrorCode, PresencePage};
use crate::session::{End, Session};
use presence::{Member, Presence, PresenceError};

/// Most bytes of members in one answer without `limit` (it then ends with a `cursor`).
const MAX_REPLY_BYTES: usize = 1 << 20;
/// Members read from the backend at a time when no `limit` is given.
const PAGE: usize = 1000;

/// Why a presence read is refused before the backend is asked.
fn refusal(session: &Session, channel: &str) -> Option<(ErrorCode, &'static str)> {
    if !session.allowed(channel, Action::Subscribe) {
        Some((ErrorCode::Forbidden, "not allowed on this channel"))
    } else if !session.reg.node.acl.presence_enabled(channel) {
        Some((
            ErrorCode::BadRequest,
            "presence is not enabled for this channel's namespace",
        ))
    } else {
        None
    }
}

pub(super) async fn apply(
    session: &mut Session,
    id: i64,
    channel: &str,
    limit: Option<u64>,
    cursor: Option<String>,
) -> Option<End> {
    if let Some((code, why)) = refusal(session, channel) {
        session.error(id, code, why);
        return None;
    }
    match page(&*session.reg.node.presence, channel, limit, cursor).await {
        Ok(page) => session.answer(id, &Answer::Presence(&page)),
        Err(e) => session.error(id, ErrorCode::from(&e), &e.to_string()),
    }
    None
}

pub(super) async fn stats(session: &mut Session, id: i64, channel: &str) -> Option<End> {
    if let Some((code, why)) = refusal(session, channel) {
        session.error(id, code, why);
        return None;
    }
    match session.reg.node.presence.stats(channel).await {
        Ok(s) => session.answer(
            id,
            &Answer::PresenceStats {
                users: s.users,
                conns: s.conns,
            },
        ),
        Err(e) => session.error(id, ErrorCode::from(&e), &e.to_string()),
    }
    None
}

/// One answer of `presence` (and `GET /api/presence`): `{"members"}`, plus `"cursor"` when
/// more members follow. With `limit`, at most that many; without, every member that fits in
/// [`MAX_REPLY_BYTES`].
pub async fn page(
    presence: &dyn Presence,
    channel: &str,
    limit: Option<u64>,
    cursor: Option<String>,
) -> Result<PresencePage, PresenceError> {
    let mut members: Vec<Member> = Vec::new();
    let mut after = cursor;
    let mut more = false;
    match limit {
        Some(limit) => {
            let limit = limit as usize;
            members = presence
                .members_page(channel, after.as_deref(), limit + 1)
                .await?;
            more = members.len() > limit;
            members.truncate(limit);
        }
        None => {
            let mut bytes = 0;
            'pages: loop {
                let page = presence
                    .members_page(channel, after.as_deref(), PAGE)
                    .await?;
                let full = page.len() == PAGE;
                for m in page {
                    bytes += m.user.len() + m.name.as_ref().map_or(0, String::len) + 48;
                    if bytes > MAX_REPLY_BYTES {
                        more = true;
                        break 'pages;
                    }
                    members.push(m);
                }
                if !full {
                    break;
                }
                after = members.last().map(|m| m.user.clone());
            }
        }
    }
    let cursor = if more {
        members.last().map(|m| m.user.clone())
    } else {
        None
    };
    Ok(PresencePage { members, cursor })
}
