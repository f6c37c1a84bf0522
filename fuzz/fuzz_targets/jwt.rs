//! JWT verification (`corecast_gateway::auth::Verifier::verify`), on the token a client puts
//! in its CONNECT auth payload, and that payload's parsing (`auth::connect_auth`).
//!
//! Input: byte 0 picks the mode.
//! - Auth payload (`mode & 3 == 2`): the rest is the CONNECT packet's JSON. A token is found
//!   only in a JSON object (as serde_json reads it too) whose `token` is a string, and it
//!   never verifies (unsigned).
//! - Raw: the rest is the token. It never verifies (the fuzzer cannot sign), and every refusal
//!   is one of the documented messages.
//! - Signed: the rest is a header and claims separated by a 0xFF byte, base64url-encoded and
//!   correctly signed here with the verifier's secret. A token verifies only if its header is
//!   an object with `alg: HS256` and no `crit`, its claims are an object with a future `exp`,
//!   a `nbf` not in the future and `sub` the returned user; a `crit` header is always refused.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use corecast_gateway::auth::{connect_auth, AuthError, Verifier};
use corecast_gateway::config::Config;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;

const SECRET: &str = "fuzz-secret-0123456789abcdef0123456789";

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let mut c = Config::default();
        c.auth.jwt_secret = Some(SECRET.into());
        Verifier::from_config(&c).expect("verifier")
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn documented(e: &AuthError) {
    let text = e.to_string();
    assert!(text.starts_with("authentication token "), "{text}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let v = verifier();
    if mode & 3 == 2 {
        let mut payload = rest.to_vec();
        if let Some(token) = connect_auth(&mut payload).token {
            let parsed: Result<Value, _> = serde_json::from_slice(rest);
            let Ok(Value::Object(obj)) = parsed else {
                panic!("a token found in a payload that is not a JSON object: {rest:?}");
            };
            assert!(
                obj.get("token").is_some_and(Value::is_string),
                "a token found where serde_json sees no string token: {rest:?}"
            );
            match v.verify(&token) {
                Ok(user) => panic!("an unsigned token verified as {user:?}: {token}"),
                Err(e) => documented(&e),
            }
        }
        return;
    }
    if mode & 1 == 0 {
        let token = String::from_utf8_lossy(rest);
        match v.verify(&token) {
            Ok(user) => panic!("an unsigned token verified as {user:?}: {token}"),
            Err(e) => documented(&e),
        }
        return;
    }

    let (header, claims) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b"{}"[..]),
    };
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .expect("sign");
    let token = format!("{message}.{sig}");
    let result = v.verify(&token);

    let header_v: Option<serde_json::Map<String, Value>> = match serde_json::from_slice(header) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    };
    if header_v.as_ref().is_some_and(|h| h.contains_key("crit")) {
        assert_eq!(result, Err(AuthError::CriticalHeader));
    }
    match result {
        Err(e) => documented(&e),
        Ok(user) => {
            let h = header_v.expect("verified: the header is a JSON object");
            assert_eq!(h.get("alg").and_then(Value::as_str), Some("HS256"));
            assert!(!h.contains_key("crit"));
            let c: serde_json::Map<String, Value> =
                serde_json::from_slice(claims).expect("verified: the claims are a JSON object");
            let t = now();
            let exp = c.get("exp").and_then(Value::as_f64).expect("verified: exp");
            assert!(
                exp + 10.0 >= t as f64,
                "expired token verified: exp {exp}, now {t}"
            );
            if let Some(nbf) = c.get("nbf").and_then(Value::as_f64) {
                assert!(
                    nbf <= t as f64 + 10.0,
                    "premature token verified: nbf {nbf}"
                );
            }
            match c.get("sub") {
                Some(Value::Number(n)) => assert_eq!(n.as_u64(), Some(user.0)),
                Some(Value::String(s)) => assert_eq!(s.parse::<u64>().ok(), Some(user.0)),
                other => panic!("verified with sub {other:?}"),
            }
        }
    }
});
