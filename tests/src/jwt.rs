//! Minting valid and deliberately broken JWTs, and generating RS256 / EdDSA key pairs.

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

use crate::gateway::TempDir;

/// The HS256 secret every test gateway is started with (40 bytes).
pub const TEST_SECRET: &str = "e2e-test-secret-please-change-0123456789";

/// The API key every test gateway is started with.
pub const API_KEY: &str = "test-api-key";

/// Current Unix time in seconds.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A valid HS256 token for `sub`, expiring in an hour.
pub fn token(sub: &str) -> String {
    Token::new(sub).hs256()
}

/// The claims of a token under construction, and the ways to sign them.
#[derive(Debug, Clone)]
pub struct Token {
    claims: Map<String, Value>,
}

impl Token {
    /// Claims `sub`, `iat` = now and `exp` = now + 3600.
    pub fn new(sub: &str) -> Token {
        let now = now_secs();
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(sub));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + 3600));
        Token { claims }
    }

    /// Sets the display name claim.
    pub fn name(self, name: &str) -> Token {
        self.claim("name", json!(name))
    }

    /// Sets the `channels` claim (channel patterns).
    pub fn channels(self, patterns: &[&str]) -> Token {
        self.claim("channels", json!(patterns))
    }

    /// Sets `exp` to now + `secs` (negative for the past).
    pub fn exp_in(self, secs: i64) -> Token {
        self.claim("exp", json!(now_secs() + secs))
    }

    /// Sets `nbf` to now + `secs`.
    pub fn nbf_in(self, secs: i64) -> Token {
        self.claim("nbf", json!(now_secs() + secs))
    }

    /// Sets `iss`.
    pub fn iss(self, iss: &str) -> Token {
        self.claim("iss", json!(iss))
    }

    /// Sets `aud`.
    pub fn aud(self, aud: &str) -> Token {
        self.claim("aud", json!(aud))
    }

    /// Sets any claim.
    pub fn claim(mut self, key: &str, value: Value) -> Token {
        self.claims.insert(key.into(), value);
        self
    }

    /// Removes a claim (for instance `sub`).
    pub fn remove(mut self, key: &str) -> Token {
        self.claims.remove(key);
        self
    }

    /// The `exp` claim, if set.
    pub fn exp(&self) -> Option<i64> {
        self.claims.get("exp").and_then(Value::as_i64)
    }

    /// Signed with HS256 and [`TEST_SECRET`].
    pub fn hs256(&self) -> String {
        self.hmac(Algorithm::HS256, TEST_SECRET.as_bytes())
    }

    /// Signed with an HMAC algorithm (HS256/HS384/HS512) and the given secret.
    pub fn hmac(&self, alg: Algorithm, secret: &[u8]) -> String {
        self.sign(alg, &EncodingKey::from_secret(secret))
    }

    /// Signed with any algorithm and key.
    pub fn sign(&self, alg: Algorithm, key: &EncodingKey) -> String {
        jsonwebtoken::encode(&Header::new(alg), &self.claims, key).expect("encode jwt")
    }

    /// Signed with `key` of a generated key pair, with the pair's algorithm.
    pub fn sign_with(&self, pair: &KeyPair) -> String {
        self.sign(pair.algorithm(), &pair.encoding_key())
    }

    /// A token with header `{"alg":"none","typ":"JWT"}` and an empty signature.
    pub fn alg_none(&self) -> String {
        let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = base64url(&serde_json::to_vec(&self.claims).expect("claims"));
        format!("{header}.{payload}.")
    }

    /// A valid HS256 token whose signature was then altered.
    pub fn bad_signature(&self) -> String {
        let good = self.hs256();
        let (rest, sig) = good.rsplit_once('.').expect("three parts");
        // Replace the signature with one computed for another secret: same shape, wrong bytes.
        let other = self.hmac(
            Algorithm::HS256,
            b"another-secret-of-sufficient-length-000000",
        );
        let (_, other_sig) = other.rsplit_once('.').expect("three parts");
        assert_ne!(sig, other_sig);
        format!("{rest}.{other_sig}")
    }
}

/// Unpadded base64url, as JWTs use.
pub fn base64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// The kind of an asymmetric key pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048, for RS256.
    Rsa,
    /// Ed25519, for EdDSA.
    Ed25519,
}

/// A key pair generated with the `openssl` command into a temporary directory.
#[derive(Debug)]
pub struct KeyPair {
    kind: KeyKind,
    private_pem: Vec<u8>,
    public_pem: Vec<u8>,
    public_path: PathBuf,
    _dir: TempDir,
}

impl KeyPair {
    /// Generates a new pair (PKCS#8 private key, SubjectPublicKeyInfo public key, both PEM).
    pub fn generate(kind: KeyKind) -> KeyPair {
        let dir = TempDir::new("keys");
        let private = dir.join("private.pem");
        let public = dir.join("public.pem");
        let mut genpkey = Command::new("openssl");
        genpkey.arg("genpkey");
        match kind {
            KeyKind::Rsa => genpkey.args(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
            KeyKind::Ed25519 => genpkey.args(["-algorithm", "ed25519"]),
        };
        genpkey.arg("-out").arg(&private);
        run(&mut genpkey);
        run(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public));
        KeyPair {
            kind,
            private_pem: std::fs::read(&private).expect("read private key"),
            public_pem: std::fs::read(&public).expect("read public key"),
            public_path: public,
            _dir: dir,
        }
    }

    /// The JWT algorithm for this kind of key.
    pub fn algorithm(&self) -> Algorithm {
        match self.kind {
            KeyKind::Rsa => Algorithm::RS256,
            KeyKind::Ed25519 => Algorithm::EdDSA,
        }
    }

    /// The value for `--jwt-alg`.
    pub fn alg_flag(&self) -> &'static str {
        match self.kind {
            KeyKind::Rsa => "RS256",
            KeyKind::Ed25519 => "EdDSA",
        }
    }

    /// The signing key.
    pub fn encoding_key(&self) -> EncodingKey {
        match self.kind {
            KeyKind::Rsa => EncodingKey::from_rsa_pem(&self.private_pem),
            KeyKind::Ed25519 => EncodingKey::from_ed_pem(&self.private_pem),
        }
        .expect("parse generated private key")
    }

    /// The public key file, for `--jwt-public-key-file`.
    pub fn public_key_path(&self) -> &std::path::Path {
        &self.public_path
    }

    /// The public key, PEM.
    pub fn public_pem(&self) -> &[u8] {
        &self.public_pem
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_long_enough() {
        assert_eq!(TEST_SECRET.len(), 40);
    }

    #[test]
    fn alg_none_token_shape() {
        let t = Token::new("alice").alg_none();
        let parts: Vec<_> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2], "");
        assert_eq!(parts[0], "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0");
    }
}
