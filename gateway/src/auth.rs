//! Token verification: JWT signature, algorithm, time claims, issuer and audience, and the
//! shape of the claims the gateway relies on.

use crate::acl::valid_pattern;
use crate::config::{JwtConfig, JwtKey};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims the gateway reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Extra channel patterns the user may subscribe and publish to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
}

/// The claims of a subscription token (Centrifugo's protocol): the user may subscribe to
/// this one channel, until `exp` when it is given. Its `channel` claim keeps it from being
/// used as a connection token, which must not have one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriptionClaims {
    /// User id: the connection's.
    pub sub: String,
    /// The channel granted.
    pub channel: String,
    /// Expiry, Unix seconds; none: the subscription does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

/// A connection token's claims, and whether it names a channel (then it is a subscription
/// token, refused as a connection token). [`Claims`]' fields spelled out rather than
/// `#[serde(flatten)]`, which makes serde buffer the whole payload before reading it (a tenth
/// of a connect's CPU went to reading tokens).
#[derive(Deserialize)]
struct ConnectionToken {
    sub: String,
    exp: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    channel: Option<serde::de::IgnoredAny>,
}

/// Why a token was refused. The message never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token in the request.
    #[error("missing token")]
    Missing,
    /// Signature, algorithm, time or issuer/audience checks failed.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The claims are not what the gateway needs.
    #[error("invalid claims: {0}")]
    Claims(&'static str),
}

impl AuthError {
    /// Whether the token was refused for its time alone (expired, or not yet valid).
    pub fn is_expired(&self) -> bool {
        matches!(self, AuthError::Invalid(why) if why == "expired" || why.starts_with("not yet valid"))
    }
}

/// Verifies tokens with the configured key and rules.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// For subscription tokens: `exp` is not required.
    subscription: Validation,
    signer: Option<EncodingKey>,
}

impl Verifier {
    /// Builds the verifier; fails on unusable key material.
    pub fn new(config: &JwtConfig) -> anyhow::Result<Self> {
        use jsonwebtoken::Algorithm;
        let (key, signer) = match (&config.key, config.algorithm) {
            (JwtKey::Secret(secret), _) => (
                DecodingKey::from_secret(secret),
                Some(EncodingKey::from_secret(secret)),
            ),
            (JwtKey::PublicPem(pem), Algorithm::RS256) => (DecodingKey::from_rsa_pem(pem)?, None),
            (JwtKey::PublicPem(pem), _) => (DecodingKey::from_ed_pem(pem)?, None),
        };
        let mut validation = Validation::new(config.algorithm);
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if config.issuer.is_some() {
            required.push("iss");
        }
        if config.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        let mut subscription = validation.clone();
        required.retain(|c| *c != "exp");
        subscription.set_required_spec_claims(&required);
        Ok(Self {
            key,
            validation,
            subscription,
            signer,
        })
    }

    /// Checks `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<ConnectionToken>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.kind_description()))?;
        let token = data.claims;
        if token.channel.is_some() {
            return Err(AuthError::Claims(
                "a subscription token (with a channel claim) is not a connection token",
            ));
        }
        let claims = Claims {
            sub: token.sub,
            exp: token.exp,
            name: token.name,
            channels: token.channels,
        };
        if claims.sub.is_empty() || claims.sub.len() > 128 {
            return Err(AuthError::Claims("sub must be 1..=128 bytes"));
        }
        if claims.sub.chars().any(char::is_control) {
            return Err(AuthError::Claims("sub must not contain control characters"));
        }
        if !claims.channels.iter().all(|p| valid_pattern(p)) {
            return Err(AuthError::Claims(
                "channels patterns may use * only as the last character",
            ));
        }
        Ok(claims)
    }

    /// Checks a subscription token and returns its claims.
    pub fn verify_subscription(&self, token: &str) -> Result<SubscriptionClaims, AuthError> {
        let data = jsonwebtoken::decode::<SubscriptionClaims>(token, &self.key, &self.subscription)
            .map_err(|e| AuthError::Invalid(e.kind_description()))?;
        Ok(data.claims)
    }

    /// Signs a token for `claims` (HS256 secret only; used by dev mode).
    pub fn mint(&self, claims: &Claims) -> Option<String> {
        let signer = self.signer.as_ref()?;
        jsonwebtoken::encode(&Header::new(self.validation.algorithms[0]), claims, signer).ok()
    }
}

/// A short description of a JWT error that never includes the token.
trait KindDescription {
    fn kind_description(&self) -> String;
}

impl KindDescription for jsonwebtoken::errors::Error {
    fn kind_description(&self) -> String {
        use jsonwebtoken::errors::ErrorKind::*;
        match self.kind() {
            ExpiredSignature => "expired".into(),
            ImmatureSignature => "not yet valid (nbf)".into(),
            InvalidSignature => "bad signature".into(),
            InvalidAlgorithm | InvalidAlgorithmName => "algorithm not allowed".into(),
            InvalidIssuer => "wrong issuer".into(),
            InvalidAudience => "wrong audience".into(),
            MissingRequiredClaim(c) => format!("missing claim {c}"),
            InvalidToken | Base64(_) | Json(_) | Utf8(_) => "malformed".into(),
            _ => "rejected".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn verifier() -> Verifier {
        Verifier::new(&JwtConfig {
            algorithm: jsonwebtoken::Algorithm::HS256,
            key: JwtKey::Secret(b"0123456789abcdef0123456789abcdef".to_vec()),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(0),
        })
        .unwrap()
    }

    fn claims(sub: &str) -> Claims {
        Claims {
            sub: sub.into(),
            exp: now() + 60,
            name: None,
            channels: vec![],
        }
    }

    #[test]
    fn minted_tokens_verify_and_bad_claims_do_not() {
        let v = verifier();
        let token = v.mint(&claims("alice")).unwrap();
        assert_eq!(v.verify(&token).unwrap().sub, "alice");
        let expired = v
            .mint(&Claims {
                exp: now() - 10,
                ..claims("a")
            })
            .unwrap();
        assert!(matches!(v.verify(&expired), Err(AuthError::Invalid(_))));
        assert!(v.verify(&v.mint(&claims("")).unwrap()).is_err());
        assert!(v.verify(&v.mint(&claims("a\nb")).unwrap()).is_err());
        let bad_pattern = Claims {
            channels: vec!["a*b".into()],
            ..claims("a")
        };
        assert!(v.verify(&v.mint(&bad_pattern).unwrap()).is_err());
        assert!(matches!(v.verify("garbage"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn subscription_and_connection_tokens_are_not_interchangeable() {
        let v = verifier();
        let secret = b"0123456789abcdef0123456789abcdef";
        let sign = |claims: &serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(jsonwebtoken::Algorithm::HS256),
                claims,
                &EncodingKey::from_secret(secret),
            )
            .unwrap()
        };
        let sub_token = sign(&serde_json::json!({"sub": "alice", "channel": "room:x"}));
        let granted = v.verify_subscription(&sub_token).unwrap();
        assert_eq!((granted.channel.as_str(), granted.exp), ("room:x", None));
        let with_exp = serde_json::json!({"sub": "alice", "channel": "room:x", "exp": now() + 60});
        assert!(
            v.verify(&sign(&with_exp)).is_err(),
            "a subscription token connected"
        );
        let conn_token = v.mint(&claims("alice")).unwrap();
        assert!(v.verify_subscription(&conn_token).is_err());
        let expired = serde_json::json!({"sub": "alice", "channel": "room:x", "exp": now() - 10});
        assert!(
            v.verify_subscription(&sign(&expired))
                .unwrap_err()
                .is_expired()
        );
    }
}
