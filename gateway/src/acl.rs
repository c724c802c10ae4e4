//! Who may subscribe and publish where: namespaces, personal channels and token patterns.

use serde::Deserialize;

/// A channel namespace: every channel whose name starts with `prefix`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// Channel-name prefix, for example `room:`.
    pub prefix: String,
    /// Every authenticated user may subscribe.
    #[serde(default)]
    pub open: bool,
    /// Clients who may subscribe may also publish (otherwise only backends, or token patterns).
    #[serde(default)]
    pub client_publish: bool,
    /// Presence (presence pushes and the `presence` ops) is on.
    #[serde(default)]
    pub presence: bool,
    /// How subscribers hear of presence changes when their `subscribe` does not say
    /// [default: `each`, the v1 `join`/`leave` pushes].
    #[serde(default)]
    pub join_leave: JoinLeave,
    /// Messages go to the archive (when there is one) [default: true].
    #[serde(default = "yes")]
    pub archive: bool,
    /// Delta types subscribers may ask for (Centrifugo's `delta` on subscribe): `["fossil"]`
    /// sends each publication to them as a Fossil delta from the previous one when that is
    /// smaller [default: none].
    #[serde(default)]
    pub allowed_delta_types: Vec<DeltaType>,
    /// Subscribes (without a subscription token) are decided by the subscribe proxy
    /// (`--proxy-subscribe-url`) instead of `open` and token patterns [default: false].
    #[serde(default)]
    pub proxy_subscribe: bool,
    /// Publishes are decided, and may be rewritten, by the publish proxy
    /// (`--proxy-publish-url`) instead of `client_publish` and token patterns
    /// [default: false].
    #[serde(default)]
    pub proxy_publish: bool,
    /// The webhooks report this namespace's channels (`--webhook-url`): occupied and vacated,
    /// members added and removed, and client publishes when `client_event` is asked for
    /// [default: false].
    #[serde(default)]
    pub webhooks: bool,
}

/// A delta encoding of publications (see `crate::delta`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeltaType {
    /// Fossil's delta format, which centrifuge-js applies.
    Fossil,
}

/// How one subscription hears of users joining and leaving a presence channel. Changes are
/// gathered per channel for `--presence-diff-interval-ms` and pushed together; a user who
/// joins and leaves within one interval is not announced.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JoinLeave {
    /// Nothing is pushed (the client may still ask with `presence` / `presence_stats`).
    Off,
    /// One `presence_diff` push per interval with the users who joined and left.
    Diff,
    /// The v1 pushes: one `join` or `leave` per user (costs a frame per change per member).
    #[default]
    Each,
}

fn yes() -> bool {
    true
}

impl Namespace {
    /// The default namespaces with `configured` added; a configured prefix that equals a
    /// default one replaces it.
    pub fn with_defaults(configured: Vec<Namespace>) -> Vec<Namespace> {
        let mut all = Self::defaults();
        for ns in configured {
            match all.iter_mut().find(|d| d.prefix == ns.prefix) {
                Some(existing) => *existing = ns,
                None => all.push(ns),
            }
        }
        all
    }

    /// The default namespaces: `room:`, open to every user, with presence.
    pub fn defaults() -> Vec<Namespace> {
        vec![Namespace {
            prefix: "room:".into(),
            open: true,
            client_publish: true,
            presence: true,
            join_leave: JoinLeave::Each,
            archive: true,
            allowed_delta_types: Vec::new(),
            proxy_subscribe: false,
            proxy_publish: false,
            webhooks: false,
        }]
    }
}

/// What a client wants to do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Subscribe, read history or presence.
    Subscribe,
    /// Publish.
    Publish,
}

/// The prefix of personal channels.
pub const PERSONAL_PREFIX: &str = "user:";

/// The access rules of the node.
#[derive(Debug, Clone)]
pub struct Acl {
    namespaces: Vec<Namespace>,
    direct_messages: bool,
    /// Whether any namespace has `proxy_subscribe`, `proxy_publish`, `webhooks`: the common
    /// answer, no, costs no namespace lookup on every subscribe, publish and join.
    any_proxy_subscribe: bool,
    any_proxy_publish: bool,
    any_webhooks: bool,
}

/// Checks a channel name: 1..=128 bytes of `[A-Za-z0-9_:.@-]`.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'@' | b'-'))
}

/// Checks a token's channel pattern: `*` only as the last character.
pub fn valid_pattern(pattern: &str) -> bool {
    let body = pattern.strip_suffix('*').unwrap_or(pattern);
    !pattern.is_empty() && !body.contains('*')
}

fn pattern_matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

impl Acl {
    /// Rules from the configured namespaces.
    pub fn new(namespaces: Vec<Namespace>, direct_messages: bool) -> Self {
        Self {
            any_proxy_subscribe: namespaces.iter().any(|n| n.proxy_subscribe),
            any_proxy_publish: namespaces.iter().any(|n| n.proxy_publish),
            any_webhooks: namespaces.iter().any(|n| n.webhooks),
            namespaces,
            direct_messages,
        }
    }

    fn namespace(&self, channel: &str) -> Option<&Namespace> {
        self.namespaces
            .iter()
            .filter(|ns| channel.starts_with(&ns.prefix))
            .max_by_key(|ns| ns.prefix.len())
    }

    /// Whether `channel` has presence on.
    pub fn presence_enabled(&self, channel: &str) -> bool {
        !channel.starts_with(PERSONAL_PREFIX) && self.namespace(channel).is_some_and(|n| n.presence)
    }

    /// Whether the webhooks report `channel` (its namespace has `webhooks`; never personal
    /// channels).
    pub fn webhooks_enabled(&self, channel: &str) -> bool {
        self.any_webhooks
            && !channel.starts_with(PERSONAL_PREFIX)
            && self.namespace(channel).is_some_and(|n| n.webhooks)
    }

    /// Whether the node keeps `channel`'s presence: for clients (`presence`) or for the
    /// webhooks, whose events are presence's transitions.
    pub fn presence_tracked(&self, channel: &str) -> bool {
        self.presence_enabled(channel) || self.webhooks_enabled(channel)
    }

    /// How a subscription to `channel` that asked for `wanted` hears of presence changes:
    /// as asked, or the namespace's default; `Off` where presence is off, whatever it asked.
    pub fn join_leave(&self, channel: &str, wanted: Option<JoinLeave>) -> JoinLeave {
        match self.namespace(channel) {
            Some(ns) if ns.presence && !channel.starts_with(PERSONAL_PREFIX) => {
                wanted.unwrap_or(ns.join_leave)
            }
            _ => JoinLeave::Off,
        }
    }

    /// Whether subscribers of `channel` may have Fossil deltas (its namespace allows them;
    /// never on personal channels).
    pub fn delta_allowed(&self, channel: &str) -> bool {
        !channel.starts_with(PERSONAL_PREFIX)
            && self
                .namespace(channel)
                .is_some_and(|n| n.allowed_delta_types.contains(&DeltaType::Fossil))
    }

    /// Whether `action` on `channel` is the backend's to decide (its namespace has
    /// `proxy_subscribe` or `proxy_publish`; never on personal channels).
    pub fn proxied(&self, channel: &str, action: Action) -> bool {
        let any = match action {
            Action::Subscribe => self.any_proxy_subscribe,
            Action::Publish => self.any_proxy_publish,
        };
        any && !channel.starts_with(PERSONAL_PREFIX)
            && self.namespace(channel).is_some_and(|n| match action {
                Action::Subscribe => n.proxy_subscribe,
                Action::Publish => n.proxy_publish,
            })
    }

    /// Whether messages on `channel` are archived (personal channels and channels outside
    /// any namespace are; a namespace may opt out with `archive = false`).
    pub fn archive_enabled(&self, channel: &str) -> bool {
        channel.starts_with(PERSONAL_PREFIX) || self.namespace(channel).is_none_or(|n| n.archive)
    }

    /// Whether `user`, holding token `patterns`, may do `action` on `channel`.
    pub fn allows(&self, user: &str, patterns: &[String], channel: &str, action: Action) -> bool {
        if let Some(owner) = channel.strip_prefix(PERSONAL_PREFIX) {
            return owner == user || (action == Action::Publish && self.direct_messages);
        }
        if let Some(ns) = self.namespace(channel) {
            let by_namespace = match action {
                Action::Subscribe => ns.open,
                Action::Publish => ns.open && ns.client_publish,
            };
            if by_namespace {
                return true;
            }
        }
        patterns.iter().any(|p| pattern_matches(p, channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(valid_channel("room:lobby"));
        assert!(valid_channel("a.b@c-d_e:1"));
        assert!(!valid_channel(""));
        assert!(!valid_channel("room:a b"));
        assert!(!valid_channel("room:é"));
        assert!(!valid_channel(&"x".repeat(129)));
        assert!(valid_channel(&"x".repeat(128)));
    }

    #[test]
    fn rules() {
        let mut namespaces = Namespace::defaults();
        namespaces.push(Namespace {
            prefix: "news:".into(),
            open: true,
            client_publish: false,
            presence: false,
            join_leave: JoinLeave::Diff,
            archive: false,
            allowed_delta_types: vec![DeltaType::Fossil],
            proxy_subscribe: false,
            proxy_publish: false,
            webhooks: false,
        });
        let acl = Acl::new(namespaces, true);
        assert!(acl.archive_enabled("room:x") && acl.archive_enabled("user:a"));
        assert!(acl.archive_enabled("other:x") && !acl.archive_enabled("news:x"));
        assert!(acl.delta_allowed("news:x") && !acl.delta_allowed("room:x"));
        assert!(!acl.delta_allowed("user:a") && !acl.delta_allowed("other:x"));
        let none: Vec<String> = vec![];
        assert!(acl.allows("a", &none, "room:x", Action::Subscribe));
        assert!(acl.allows("a", &none, "room:x", Action::Publish));
        assert!(acl.allows("a", &none, "news:x", Action::Subscribe));
        assert!(!acl.allows("a", &none, "news:x", Action::Publish));
        assert!(acl.allows("a", &none, "user:a", Action::Subscribe));
        assert!(!acl.allows("a", &none, "user:b", Action::Subscribe));
        assert!(acl.allows("a", &none, "user:b", Action::Publish));
        assert!(!acl.allows("a", &none, "secret:x", Action::Subscribe));
        let grants = vec!["secret:*".to_string(), "user:*".to_string()];
        assert!(acl.allows("a", &grants, "secret:x", Action::Publish));
        assert!(!acl.allows("a", &grants, "user:b", Action::Subscribe));
        assert!(acl.presence_enabled("room:x") && !acl.presence_enabled("news:x"));
        assert_eq!(acl.join_leave("room:x", None), JoinLeave::Each);
        assert_eq!(
            acl.join_leave("room:x", Some(JoinLeave::Diff)),
            JoinLeave::Diff
        );
        assert_eq!(
            acl.join_leave("news:x", Some(JoinLeave::Each)),
            JoinLeave::Off
        );
        assert_eq!(acl.join_leave("user:a", None), JoinLeave::Off);
        let no_dm = Acl::new(Namespace::defaults(), false);
        assert!(!no_dm.allows("a", &none, "user:b", Action::Publish));
        assert!(no_dm.allows("a", &none, "user:a", Action::Publish));
    }

    #[test]
    fn patterns() {
        assert!(valid_pattern("room:*"));
        assert!(valid_pattern("exact"));
        assert!(!valid_pattern("a*b"));
        assert!(!valid_pattern("**"));
        assert!(!valid_pattern(""));
    }
}
