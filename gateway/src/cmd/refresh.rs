//! `refresh`: a new token for the same user extends the connection's life. Its `channels`
//! replace the old ones: a subscription the new token no longer grants ends with an
//! `unsubscribe` push (`code` `forbidden`), so that narrowing a user's rights takes effect on
//! live connections, not only on the next subscribe.

use crate::acl::Action;
use crate::protocol::{Answer, ErrorCode, UnsubscribeReason, unsubscribe_frame};
use crate::session::{End, Session, expiry_instant};
use std::sync::Arc;

pub(super) async fn apply(session: &mut Session, id: i64, token: &str) -> Option<End> {
    match session.reg.node.verifier.verify(token) {
        Err(e) => session.error(id, ErrorCode::Unauthorized, &e.to_string()),
        Ok(claims) if *claims.sub != *session.reg.conn.user => session.error(
            id,
            ErrorCode::Forbidden,
            "the new token is for another user",
        ),
        Ok(claims) => {
            session.expires_at = expiry_instant(&session.reg.node, claims.exp);
            session.patterns = claims.channels;
            if claims.name.is_some() {
                session.name = claims.name;
            }
            // The reply first: the client learns of the refresh before what it revoked.
            let client = session.client_id();
            session.answer(
                id,
                &Answer::Refreshed {
                    exp: claims.exp,
                    client: &client,
                },
            );
            let revoked: Vec<Arc<str>> = session
                .subs
                .iter()
                .filter(|c| !session.allowed(c, Action::Subscribe))
                .cloned()
                .collect();
            for channel in revoked {
                if session.leave(&channel).await {
                    session.reg.conn.push_frame(unsubscribe_frame(
                        session.reg.conn.encoding,
                        &channel,
                        UnsubscribeReason::Forbidden,
                    ));
                }
            }
        }
    }
    None
}
