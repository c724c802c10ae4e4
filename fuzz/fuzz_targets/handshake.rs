//! The handshake's inputs: header lines (`name: value`), the token from a header or the query,
//! the subprotocol offer and the Origin check, then the token's verification.
#![no_main]

use gateway::auth::Verifier;
use gateway::config::{AllowedOrigins, Config, Settings};
use gateway::http::{TokenQuery, request_token};
use gateway::protocol::Encoding;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        use clap::Parser;
        let settings = Settings::parse_from([
            "gateway",
            "--jwt-secret",
            "fuzz-secret-fuzz-secret-fuzz-secret-0123",
        ]);
        let config = Config::from_settings(settings).expect("config");
        Verifier::new(&config.jwt).expect("verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut headers = HeaderMap::new();
    let mut query = TokenQuery::default();
    for line in text.split("\r\n") {
        if let Some(token) = line.strip_prefix("?token=") {
            query.token = Some(token.to_string());
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    // The chosen subprotocol is one the client offered, by its exact name.
    let offers: Vec<String> = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|h| h.split(',').map(|p| p.trim().to_string()))
        .filter(|p| !p.is_empty())
        .collect();
    match Encoding::negotiate(offers.iter().map(String::as_str)) {
        Some(Some(Encoding::Json)) => assert!(offers.iter().any(|p| p == "v1.json"), "{offers:?}"),
        Some(Some(Encoding::MsgPack)) => {
            assert!(offers.iter().any(|p| p == "v1.msgpack"), "{offers:?}")
        }
        Some(Some(Encoding::CentrifugeJson | Encoding::CentrifugeProtobuf)) => {
            panic!("the v1 door chose Centrifugo's protocol for {offers:?}")
        }
        Some(None) => assert!(offers.is_empty(), "{offers:?}"),
        None => assert!(
            !offers.is_empty() && !offers.iter().any(|p| p == "v1.json" || p == "v1.msgpack"),
            "{offers:?}"
        ),
    }
    // A foreign Origin is never accepted: same-origin takes only `http(s)://<Host>`, and a
    // list only its own entries besides.
    if let Some(origin) = headers
        .get(http::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    {
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let normal = origin.trim().to_ascii_lowercase();
        let same_origin = host.is_some_and(|host| {
            let host = host.trim().to_ascii_lowercase();
            normal == format!("http://{host}") || normal == format!("https://{host}")
        });
        assert_eq!(
            AllowedOrigins::SameOrigin.allows(origin, host),
            same_origin,
            "same-origin check of {origin:?} with Host {host:?}"
        );
        let list = AllowedOrigins::parse("https://app.example, http://localhost:3000")
            .expect("a valid list");
        let listed = normal == "https://app.example" || normal == "http://localhost:3000";
        assert_eq!(
            list.allows(origin, host),
            same_origin || listed,
            "list check of {origin:?} with Host {host:?}"
        );
    }
    if let Some(token) = request_token(&headers, query) {
        if let Ok(claims) = verifier().verify(&token) {
            // Only a token signed with the secret passes; a fuzzer cannot forge one.
            panic!("a forged token was accepted: {claims:?}");
        }
    }
});
