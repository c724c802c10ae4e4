//! Server-side refreshes: a connection the connect proxy let in, and a subscription the
//! subscribe proxy granted, with an `expire_at`, are extended by asking the refresh and
//! sub_refresh proxies when it comes (the client is never asked for a token). A backend that
//! does not answer (timeout, breaker open, failure) is asked again after [`RETRY`]: an outage
//! of the backend does not end every connection at once.

use super::{End, Session, expiry_instant};
use crate::protocol::CloseReason;
use crate::proxy::wire::{RefreshResult, SubRefreshRequest};
use crate::proxy::{Answer, Kind, disconnect_reason};
use fanout::util::unix_secs;
use std::time::{Duration, Instant};

/// How long after a failed refresh call the backend is asked again.
pub(crate) const RETRY: Duration = Duration::from_secs(5);

/// What a sub_refresh came to.
pub(super) enum Extended {
    /// The subscription goes on.
    Yes,
    /// It ends (an `unsubscribe` asks the client to subscribe again).
    No,
    /// The backend ended the connection.
    Disconnect(End),
}

/// A backend's `expire_at` as a deadline: `Ok(None)` for 0 (never), `Err` when it is already
/// past (a backend's clock or logic wrong: taken as expired rather than asked again at once).
pub(crate) fn deadline(
    node: &crate::node::Node,
    expire_at: u64,
) -> Result<Option<(Instant, u64)>, ()> {
    match expire_at {
        0 => Ok(None),
        at if at <= unix_secs() => Err(()),
        at => Ok(Some((expiry_instant(node, at), at))),
    }
}

impl Session {
    /// The connection's expiry came: a connection the connect proxy let in asks the refresh
    /// proxy whether it goes on; any other ends (its token expired).
    pub(super) async fn refresh_by_proxy(&mut self, now: Instant) -> Option<End> {
        let node = self.reg.node.clone();
        let by_proxy = self.proxy_state().is_some_and(|p| p.refresh);
        if !by_proxy || !node.proxies.has(Kind::Refresh) {
            return Some(End::Close(CloseReason::TokenExpired));
        }
        let client = self.client_id();
        let request = self.proxy_client(&client);
        let answer = node
            .proxies
            .call::<RefreshResult>(Kind::Refresh, &request, self.forwarded())
            .await;
        match answer {
            Ok(Answer::Result(r)) if !r.expired => match deadline(&node, r.expire_at) {
                Ok(at) => {
                    self.expires_at = at.map_or(now + super::NEVER, |(at, _)| at);
                    None
                }
                Err(()) => Some(End::Close(CloseReason::TokenExpired)),
            },
            Ok(Answer::Result(_) | Answer::Error(_)) => Some(End::Close(CloseReason::TokenExpired)),
            Ok(Answer::Disconnect(d)) => Some(End::Close(disconnect_reason(&d))),
            Err(_) => {
                self.expires_at = now + RETRY;
                None
            }
        }
    }

    /// A subscription the subscribe proxy granted reached its `expire_at`: the sub_refresh
    /// proxy says whether it goes on.
    pub(super) async fn sub_refresh_by_proxy(&mut self, channel: &str) -> Extended {
        let node = self.reg.node.clone();
        let client = self.client_id();
        let request = SubRefreshRequest {
            client: self.proxy_client(&client),
            channel,
        };
        let answer = node
            .proxies
            .call::<RefreshResult>(Kind::SubRefresh, &request, self.forwarded())
            .await;
        let extend = |session: &mut Session, at: Option<(Instant, u64)>| {
            if let Some(g) = session
                .grants_mut()
                .iter_mut()
                .find(|g| *g.channel == *channel)
            {
                g.expires_at = at.map(|(at, _)| at);
                g.exp = at.map(|(_, exp)| exp);
            }
            Extended::Yes
        };
        match answer {
            Ok(Answer::Result(r)) if !r.expired => match deadline(&node, r.expire_at) {
                Ok(at) => extend(self, at),
                Err(()) => Extended::No,
            },
            Ok(Answer::Result(_) | Answer::Error(_)) => Extended::No,
            Ok(Answer::Disconnect(d)) => Extended::Disconnect(End::Close(disconnect_reason(&d))),
            Err(_) => {
                let retry = Instant::now() + RETRY;
                if let Some(g) = self
                    .grants_mut()
                    .iter_mut()
                    .find(|g| *g.channel == *channel)
                {
                    g.expires_at = Some(retry);
                }
                Extended::Yes
            }
        }
    }
}
