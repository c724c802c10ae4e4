//! `refresh`: a new token for the same user extends the connection's life.

use crate::protocol::ErrorCode;
use crate::session::{End, Session, expiry_instant};
use serde_json::json;

pub(super) fn apply(session: &mut Session, id: i64, token: &str) -> Option<End> {
    match session.node.verifier.verify(token) {
        Err(e) => session.error(id, ErrorCode::Unauthorized, &e.to_string()),
        Ok(claims) if *claims.sub != *session.conn.user => session.error(
            id,
            ErrorCode::Forbidden,
            "the new token is for another user",
        ),
        Ok(claims) => {
            session.expires_at = expiry_instant(&session.node, claims.exp);
            session.patterns = claims.channels;
            if claims.name.is_some() {
                session.name = claims.name;
            }
            session.reply(id, &json!({ "exp": claims.exp }));
        }
    }
    None
}
