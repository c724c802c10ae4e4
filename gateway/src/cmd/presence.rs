//! `presence`: the members of a presence-enabled channel, merged across nodes.

use crate::acl::Action;
use crate::protocol::{ErrorCode, members_json};
use crate::session::{End, Session};
use serde_json::json;

pub(super) async fn apply(session: &mut Session, id: i64, channel: &str) -> Option<End> {
    if !session.allowed(channel, Action::Subscribe) {
        session.error(id, ErrorCode::Forbidden, "not allowed on this channel");
    } else if !session.node.acl.presence_enabled(channel) {
        session.error(
            id,
            ErrorCode::BadRequest,
            "presence is not enabled for this channel's namespace",
        );
    } else {
        match session.node.presence.members(channel).await {
            Ok(members) => session.reply(id, &json!({ "members": members_json(&members) })),
            Err(e) => session.error(id, ErrorCode::from(&e), &e.to_string()),
        }
    }
    None
}
