//! `history`: a page of a channel's history, recent or archived (needs the right to
//! subscribe).

use crate::acl::Action;
use crate::protocol::{ErrorCode, HistoryReply, history_reply_frame};
use crate::session::{End, Session};
use fanout::HistoryQuery;

pub(super) async fn apply(
    session: &mut Session,
    id: i64,
    channel: &str,
    since: Option<u64>,
    before: Option<u64>,
    limit: u64,
) -> Option<End> {
    if !session.allowed(channel, Action::Subscribe) {
        session.error(id, ErrorCode::Forbidden, "not allowed on this channel");
        return None;
    }
    let query = HistoryQuery {
        since,
        before,
        limit: limit as usize,
    };
    match session.reg.node.broker.history(channel, query).await {
        Ok(page) => session.reg.conn.push_frame(history_reply_frame(
            session.reg.conn.encoding,
            id,
            HistoryReply {
                publications: &page.publications,
                offset: page.offset,
                epoch: &page.epoch,
                max_bytes: session.reg.node.config.limits.max_reply_bytes(),
                keep_newest: since.is_none(),
            },
        )),
        Err(e) => session.broker_error(id, e),
    }
    None
}
