//! `history`: a page of a channel's recent history (needs the right to subscribe).

use crate::acl::Action;
use crate::protocol::{ErrorCode, history_reply_frame};
use crate::session::{End, Session};
use fanout::HistoryQuery;

pub(super) async fn apply(
    session: &mut Session,
    id: i64,
    channel: &str,
    since: Option<u64>,
    limit: u64,
) -> Option<End> {
    if !session.allowed(channel, Action::Subscribe) {
        session.error(id, ErrorCode::Forbidden, "not allowed on this channel");
        return None;
    }
    let query = HistoryQuery {
        since,
        limit: limit as usize,
    };
    match session.node.broker.history(channel, query).await {
        Ok(page) => session.conn.push_frame(history_reply_frame(
            session.conn.encoding,
            id,
            &page.publications,
            page.offset,
            &page.epoch,
        )),
        Err(e) => session.broker_error(id, e),
    }
    None
}
