//! One module per client command: each checks what the command needs (ACL, limits) and
//! applies it. Decoding lives in `protocol::command`; node-wide work (joining channels,
//! recovery) in `node.rs`; the socket and the queue in `session.rs`.

mod history;
pub(crate) mod presence;
mod publish;
mod refresh;
mod rpc;
mod subscribe;
mod unsubscribe;

use crate::protocol::{Answer, Command, Op};
use crate::session::{End, Session};

impl Session {
    /// Runs one decoded command; `Some` ends the session.
    pub(crate) async fn handle(&mut self, Command { id, op }: Command) -> Option<End> {
        match op {
            Op::Subscribe {
                channel,
                since,
                epoch,
                join_leave,
                token,
                delta,
            } => {
                let request = subscribe::Request {
                    channel,
                    since,
                    epoch,
                    join_leave,
                    token,
                    delta,
                };
                subscribe::apply(self, id, request).await
            }
            Op::Unsubscribe { channel } => unsubscribe::apply(self, id, &channel).await,
            Op::Publish {
                channel,
                data,
                idem,
            } => publish::apply(self, id, channel, data, idem).await,
            Op::Presence {
                channel,
                limit,
                cursor,
            } => presence::apply(self, id, &channel, limit, cursor).await,
            Op::PresenceStats { channel } => presence::stats(self, id, &channel).await,
            Op::History {
                channel,
                since,
                before,
                limit,
                epoch,
                reverse,
            } => {
                let query = history::Query {
                    since,
                    before,
                    limit,
                    epoch,
                    reverse,
                };
                history::apply(self, id, &channel, query).await
            }
            Op::Refresh { token } => refresh::apply(self, id, &token).await,
            Op::Ping => {
                self.answer(id, &Answer::Pong);
                None
            }
            Op::SubRefresh { channel, token } => subscribe::refresh(self, id, &channel, &token),
            Op::Rpc { method, data } => rpc::apply(self, id, &method, data).await,
            // Nothing receives one-way messages yet: dropped, as the protocol has no reply.
            Op::Send => None,
        }
    }
}
