//! `history`: a page of a channel's history, recent or archived (needs the right to
//! subscribe).

use crate::acl::Action;
use crate::protocol::{ErrorCode, HistoryReply, history_reply_frame};
use crate::session::{End, Session};
use fanout::HistoryQuery;

/// What the client asked to read.
pub(super) struct Query {
    pub since: Option<u64>,
    pub before: Option<u64>,
    pub limit: u64,
    /// The epoch `since` belongs to: a position in another epoch is refused.
    pub epoch: Option<String>,
    pub reverse: bool,
}

pub(super) async fn apply(session: &mut Session, id: i64, channel: &str, q: Query) -> Option<End> {
    if !session.allowed(channel, Action::Subscribe) {
        session.error(id, ErrorCode::Forbidden, "not allowed on this channel");
        return None;
    }
    let query = HistoryQuery {
        since: q.since,
        before: q.before,
        limit: q.limit as usize,
    };
    match session.reg.node.broker.history(channel, query).await {
        Ok(page) if q.epoch.as_deref().is_some_and(|e| e != &*page.epoch) => session.error(
            id,
            ErrorCode::UnrecoverablePosition,
            "the position is in another epoch of this channel",
        ),
        Ok(page) => session.reg.conn.push_frame(history_reply_frame(
            session.reg.conn.encoding,
            id,
            HistoryReply {
                publications: &page.publications,
                offset: page.offset,
                epoch: &page.epoch,
                max_bytes: session.reg.node.config.limits.max_reply_bytes(),
                keep_newest: q.since.is_none(),
                reverse: q.reverse,
            },
        )),
        Err(e) => session.broker_error(id, e),
    }
    None
}
