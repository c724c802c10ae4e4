//! Server-side refreshes: a connection the connect proxy let in, and a subscription the
//! subscribe proxy granted, with an `expire_at`, are extended by asking the refresh and
//! sub_refresh proxies when it comes (the client is never asked for a token). A backend that
//! does not answer (timeout, breaker open, failure) is asked again after [`RETRY`]: an outage
//! of the backend does not end every connection at once.
//!
//! Also what every proxy call of a session shares: [`Session::ask`] (the request, with the
//! connection's part), [`Session::backend_result`] (the client told of a refusal or a
//! failure), and the connect proxy's call for both doors ([`connect`]).

use super::{End, ProxyState, Session, expiry_instant};
use crate::auth::Claims;
use crate::node::Node;
use crate::protocol::{CloseReason, Encoding, ErrorCode};
use crate::proxy::wire::{
    BackendDisconnect, BackendError, ChannelFields, Client, ConnectFields, ConnectResult,
    RefreshFields, RefreshResult, Request,
};
use crate::proxy::{self, Answer, Kind, ProxyError, disconnect_reason};
use fanout::util::unix_secs;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::{Duration, Instant};

/// Why the connect proxy let a connection in, or not.
pub(crate) enum Refused {
    /// The backend refused (or named no usable user: code 101).
    Backend(BackendError),
    /// The backend ends the connection.
    Disconnect(BackendDisconnect),
    /// No answer of the backend's.
    Failed(ProxyError),
}

/// Asks the connect proxy who a connection without a token is (`client` its id, `fields`
/// what its `connect` said): its claims, with `state` given the backend's `meta` and marked
/// as refreshed by the server.
pub(crate) async fn connect(
    node: &Node,
    state: &mut ProxyState,
    client: &str,
    encoding: Encoding,
    fields: ConnectFields<'_>,
) -> Result<Claims, Refused> {
    let request = Request {
        client: Client {
            client,
            transport: state.transport,
            protocol: proxy::protocol_name(encoding),
            encoding: "json",
            user: None,
            meta: None,
        },
        fields,
    };
    let answer = node
        .proxies
        .call::<ConnectResult>(Kind::Connect, &request, &state.forwarded)
        .await;
    match answer {
        Ok(Answer::Result(result)) => match proxy::connect_claims(result) {
            Ok((claims, meta)) => {
                state.meta = meta;
                state.refresh = true;
                Ok(claims)
            }
            Err(why) => {
                tracing::warn!(why, "the connect proxy named no usable user");
                Err(Refused::Backend(BackendError {
                    code: 101,
                    message: why.into(),
                    temporary: false,
                }))
            }
        },
        Ok(Answer::Error(e)) => Err(Refused::Backend(e)),
        Ok(Answer::Disconnect(d)) => Err(Refused::Disconnect(d)),
        Err(e) => Err(Refused::Failed(e)),
    }
}

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
    /// Asks the `kind` proxy, with `fields` after what every request says of the connection.
    pub(crate) async fn ask<T: DeserializeOwned + Default>(
        &self,
        kind: Kind,
        fields: impl Serialize,
    ) -> Result<Answer<T>, ProxyError> {
        let client = self.client_id();
        let request = Request {
            client: self.proxy_client(&client),
            fields,
        };
        self.reg
            .node
            .proxies
            .call(kind, &request, self.forwarded())
            .await
    }

    /// The backend's result for command `id`; otherwise the client is told (the backend's
    /// refusal in its words, or `unavailable`), and `Err` holds the session's end when the
    /// backend asked for one.
    pub(crate) fn backend_result<T>(
        &mut self,
        id: i64,
        answer: Result<Answer<T>, ProxyError>,
    ) -> Result<T, Option<End>> {
        match answer {
            Ok(Answer::Result(result)) => Ok(result),
            Ok(Answer::Error(e)) => {
                self.error(id, proxy::error_code(&e), &e.message);
                Err(None)
            }
            Ok(Answer::Disconnect(d)) => Err(Some(End::Close(disconnect_reason(&d)))),
            Err(e) => {
                self.error(id, ErrorCode::Unavailable, e.client_message());
                Err(None)
            }
        }
    }

    /// The connection's expiry came: a connection the connect proxy let in asks the refresh
    /// proxy whether it goes on; any other ends (its token expired).
    pub(super) async fn refresh_by_proxy(&mut self, now: Instant) -> Option<End> {
        let node = self.reg.node.clone();
        let by_proxy = self.proxy_state().is_some_and(|p| p.refresh);
        if !by_proxy || !node.proxies.has(Kind::Refresh) {
            return Some(End::Close(CloseReason::TokenExpired));
        }
        let answer = self
            .ask::<RefreshResult>(Kind::Refresh, RefreshFields {})
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
        let answer = self
            .ask::<RefreshResult>(Kind::SubRefresh, ChannelFields { channel })
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
