//! JWT verification for the Socket.IO CONNECT packet, the start-up rules for the HS256 secret,
//! and minting of development tokens.
//!
//! The algorithm is fixed by configuration (never taken from the token's header), `exp` and
//! `nbf` are enforced, `sub` (a number or a string of digits) is the user id, and a header
//! with `crit` is refused (RFC 7515 §4.1.11: we implement no extension, so we understand none).
//!
//! Each way a token can be wrong has its own [`AuthError`], because the client developer reading
//! the CONNECT_ERROR has only that message to go on. The token's parts are therefore decoded
//! here in order (shape, header, claims) before jsonwebtoken checks the signature and the
//! times; jsonwebtoken's own errors cannot tell a header's JSON from the claims' JSON.
//! Nothing here panics on any input: the `jwt` fuzz target holds it to that.

use crate::config::{Config, JwtAlgorithm, DEV_JWT_SECRET};
use crate::error::{Error, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use corecast_storage::UserId;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde_json::{Map, Value};
use std::net::SocketAddr;

/// Shortest HS256 secret accepted at start: RFC 7518 §3.2 asks for a key at least as long as
/// the hash output (256 bits); a shorter one can be found offline from any one token.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Longest part of a client's value (a foreign `alg`) echoed back in an error message.
const MAX_ECHO: usize = 32;

/// Verifies tokens. Built once at start; shared read-only by every shard.
pub struct Verifier {
    key: DecodingKey,
    alg: Algorithm,
    validation: Validation,
}

/// Why a token was refused; the text goes to the client in CONNECT_ERROR
/// (docs/protocol.md lists them).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("authentication token missing: send {{ token }} in the Socket.IO auth payload")]
    Missing,
    #[error("authentication token invalid: not a JWT (three base64url parts separated by dots)")]
    Malformed,
    #[error("authentication token invalid: the header is not base64url")]
    HeaderNotBase64,
    #[error("authentication token invalid: the header is not a JSON object ({0})")]
    HeaderNotJson(String),
    #[error("authentication token invalid: the header has no alg")]
    MissingAlgorithm,
    #[error("authentication token invalid: algorithm {found} is not accepted (this server takes {expected})")]
    WrongAlgorithm {
        found: String,
        expected: &'static str,
    },
    #[error(
        "authentication token refused: its header lists critical extensions (crit), \
         and this server supports none"
    )]
    CriticalHeader,
    #[error("authentication token invalid: the claims are not base64url")]
    ClaimsNotBase64,
    #[error("authentication token invalid: the claims are not a JSON object ({0})")]
    ClaimsNotJson(String),
    #[error("authentication token invalid: the signature is not base64url")]
    SignatureNotBase64,
    #[error("authentication token invalid: bad signature (signed with another key?)")]
    BadSignature,
    #[error("authentication token invalid: the {0} claim is missing")]
    MissingClaim(String),
    #[error("authentication token invalid: the {0} claim must be a number of seconds since 1970")]
    BadTimeClaim(String),
    #[error("authentication token expired")]
    Expired,
    #[error("authentication token not yet valid (nbf)")]
    NotYetValid,
    #[error("authentication token invalid: the sub claim (the user id) is missing")]
    MissingSubject,
    #[error(
        "authentication token invalid: sub must be a user id (a number or a string of digits)"
    )]
    BadSubject,
    #[error("authentication token invalid: {0}")]
    Invalid(String),
}

/// The problem with the HS256 secret in `config`, if any, as the start-up error to print.
/// Sans-IO: the rule is the config alone.
///
/// - A configured secret shorter than [`MIN_HS256_SECRET_BYTES`] is refused.
/// - The development secret (the default, or the same text configured) is public, so anyone
///   can mint tokens for it: it is refused unless the public listener is on a loopback
///   address, where only this machine can connect.
///
/// RS256 and ES256 use no secret, so nothing is checked for them.
/// The token of a CONNECT packet's auth payload (`{ "token": "<jwt>" }`), parsed in place;
/// `None` when there is no payload, it is not JSON, or it has no string `token`.
/// What a CONNECT's auth payload carries: the token, and on a reconnect of socket.io-client
/// the `pid` and `offset` of connection state recovery (recovery.rs).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConnectAuth {
    pub token: Option<String>,
    pub pid: Option<String>,
    pub offset: Option<String>,
}

pub fn connect_auth(data: &mut [u8]) -> ConnectAuth {
    use simd_json::prelude::*;
    if data.is_empty() {
        return ConnectAuth::default();
    }
    let Ok(v) = simd_json::to_borrowed_value(data) else {
        return ConnectAuth::default();
    };
    let field = |k: &str| v.get(k).and_then(|t| t.as_str()).map(str::to_string);
    ConnectAuth {
        token: field("token"),
        pid: field("pid"),
        offset: field("offset"),
    }
}

pub fn secret_problem(config: &Config) -> Option<String> {
    if config.auth.jwt_algorithm != JwtAlgorithm::HS256 {
        return None;
    }
    let (secret, _) = config.jwt_secret();
    let listen = config.server.listen;
    if secret == DEV_JWT_SECRET {
        return (!is_loopback(listen)).then(|| {
            format!(
                "refusing to serve {listen} with the development JWT secret, which is public \
                 (anyone can mint tokens for it): set CORECAST_JWT_SECRET (auth.jwt_secret) to \
                 a secret of at least {MIN_HS256_SECRET_BYTES} bytes, e.g. the output of \
                 `openssl rand -base64 48`, or listen on a loopback address"
            )
        });
    }
    (secret.len() < MIN_HS256_SECRET_BYTES).then(|| {
        format!(
            "CORECAST_JWT_SECRET (auth.jwt_secret) is {} bytes; an HS256 secret must be at \
             least {MIN_HS256_SECRET_BYTES} bytes (RFC 7518 §3.2), e.g. the output of \
             `openssl rand -base64 48`",
            secret.len()
        )
    })
}

fn is_loopback(addr: SocketAddr) -> bool {
    // `::ffff:127.0.0.1` is loopback too.
    addr.ip().to_canonical().is_loopback()
}

fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "another algorithm",
    }
}

/// The first [`MAX_ECHO`] bytes of `s`, cut at a character boundary.
fn echo(s: &str) -> String {
    let mut end = s.len().min(MAX_ECHO);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// One part of a token: base64url without padding, then a JSON object.
fn json_part(part: &str) -> Result<Map<String, Value>, PartError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| PartError::NotBase64)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(PartError::NotJson("not an object".into())),
        Err(e) => Err(PartError::NotJson(e.to_string())),
    }
}

enum PartError {
    NotBase64,
    NotJson(String),
}

impl Verifier {
    /// Builds the verifier of `config`; refuses a secret that [`secret_problem`] names, and a
    /// public key file that is missing or of the wrong kind.
    pub fn from_config(config: &Config) -> Result<Verifier> {
        if let Some(problem) = secret_problem(config) {
            return Err(Error::Secret(problem));
        }
        let (key, alg) = match config.auth.jwt_algorithm {
            JwtAlgorithm::HS256 => (
                DecodingKey::from_secret(config.jwt_secret().0.as_bytes()),
                Algorithm::HS256,
            ),
            alg => {
                let path = config
                    .auth
                    .jwt_public_key_file
                    .as_ref()
                    .ok_or(Error::NoPublicKeyFile)?;
                let pem = std::fs::read(path).map_err(|source| Error::ReadPublicKey {
                    path: path.clone(),
                    source,
                })?;
                let bad_key = |kind| {
                    move |source| Error::BadPublicKey {
                        path: path.clone(),
                        kind,
                        source,
                    }
                };
                if alg == JwtAlgorithm::RS256 {
                    let key =
                        DecodingKey::from_rsa_pem(&pem).map_err(bad_key("an RSA public key"))?;
                    (key, Algorithm::RS256)
                } else {
                    let key = DecodingKey::from_ec_pem(&pem)
                        .map_err(bad_key("an EC (P-256) public key"))?;
                    (key, Algorithm::ES256)
                }
            }
        };
        let mut validation = Validation::new(alg);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.required_spec_claims = ["exp"].iter().map(|s| s.to_string()).collect();
        Ok(Verifier {
            key,
            alg,
            validation,
        })
    }

    /// Verifies `token` and returns its user.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        self.verify_session(token).map(|(user, _)| user)
    }

    /// Verifies `token` and returns its user and its expiry (`exp`, in milliseconds since the
    /// epoch): a session opened with it is closed once that passes, unless refreshed.
    ///
    /// Checks in this order, so the error names the first thing wrong: the shape, the header
    /// (base64url, a JSON object, no `crit`, the configured `alg`), the claims (base64url, a
    /// JSON object), then the signature, `exp` and `nbf` (jsonwebtoken), then `sub`.
    pub fn verify_session(&self, token: &str) -> Result<(UserId, u64), AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };

        let header = json_part(header).map_err(|e| match e {
            PartError::NotBase64 => AuthError::HeaderNotBase64,
            PartError::NotJson(why) => AuthError::HeaderNotJson(why),
        })?;
        if header.contains_key("crit") {
            return Err(AuthError::CriticalHeader);
        }
        let expected = algorithm_name(self.alg);
        match header.get("alg") {
            None => return Err(AuthError::MissingAlgorithm),
            Some(Value::String(found)) if found == expected => {}
            Some(Value::String(found)) => {
                return Err(AuthError::WrongAlgorithm {
                    found: echo(found),
                    expected,
                })
            }
            Some(other) => {
                return Err(AuthError::WrongAlgorithm {
                    found: echo(&other.to_string()),
                    expected,
                })
            }
        }
        let claims = json_part(claims).map_err(|e| match e {
            PartError::NotBase64 => AuthError::ClaimsNotBase64,
            PartError::NotJson(why) => AuthError::ClaimsNotJson(why),
        })?;

        // jsonwebtoken reports an `exp` of the wrong type as missing; say what it is.
        for claim in ["exp", "nbf"] {
            match claims.get(claim) {
                None | Some(Value::Null) if claim == "exp" => {
                    return Err(AuthError::MissingClaim(claim.into()))
                }
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) if n.as_f64().is_some_and(|t| t >= 0.0) => {}
                Some(_) => return Err(AuthError::BadTimeClaim(claim.into())),
            }
        }

        // The shape is right; what jsonwebtoken can still refuse is the signature, the times,
        // and a standard header field of the wrong type (its `Header` is typed).
        decode::<serde::de::IgnoredAny>(token, &self.key, &self.validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::Base64(_) => AuthError::SignatureNotBase64,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
            ErrorKind::InvalidClaimFormat(c) => AuthError::BadTimeClaim(c.clone()),
            ErrorKind::Json(e) => AuthError::HeaderNotJson(e.to_string()),
            ErrorKind::InvalidAudience => {
                AuthError::Invalid("aud claim present, but no audience is configured".into())
            }
            _ => AuthError::Invalid(e.to_string()),
        })?;

        let exp_ms = claims
            .get("exp")
            .and_then(Value::as_f64)
            .map_or(0, |secs| (secs * 1000.0) as u64);
        let user = match claims.get("sub") {
            None => Err(AuthError::MissingSubject),
            Some(Value::Number(n)) => n.as_u64().map(UserId).ok_or(AuthError::BadSubject),
            Some(Value::String(s))
                if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) =>
            {
                s.parse().map(UserId).map_err(|_| AuthError::BadSubject)
            }
            Some(_) => Err(AuthError::BadSubject),
        }?;
        Ok((user, exp_ms))
    }
}

#[derive(Serialize)]
struct MintClaims {
    sub: u64,
    iat: u64,
    exp: u64,
}

/// Mints an HS256 token for `sub`, valid for `ttl_secs`.
pub fn mint(secret: &str, sub: UserId, ttl_secs: u64) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(Error::Clock)?
        .as_secs();
    let claims = MintClaims {
        sub: sub.0,
        iat: now,
        exp: now + ttl_secs,
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(Error::Sign)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "unit-test-secret-0123456789abcdef";

    #[test]
    fn the_connect_payload_gives_its_string_token_only() {
        let token = |s: &str| connect_auth(&mut s.as_bytes().to_vec()).token;
        assert_eq!(token(r#"{"token":"abc"}"#), Some("abc".into()));
        assert_eq!(token(r#"{"token":"a\u0062c","x":1}"#), Some("abc".into()));
        for none in [
            "",
            "{}",
            r#"{"token":7}"#,
            r#"["token"]"#,
            "not json",
            r#""token""#,
        ] {
            assert_eq!(token(none), None, "{none:?}");
        }
        let auth = connect_auth(&mut br#"{"token":"t","pid":"p","offset":"o"}"#.to_vec());
        assert_eq!(
            (auth.pid.as_deref(), auth.offset.as_deref()),
            (Some("p"), Some("o"))
        );
        let auth = connect_auth(&mut br#"{"token":"t","pid":3}"#.to_vec());
        assert_eq!((auth.pid, auth.offset), (None, None), "strings only");
    }
    const FAR: u64 = 4_000_000_000;

    fn verifier(secret: &str) -> Verifier {
        let mut c = Config::default();
        c.auth.jwt_secret = Some(secret.into());
        Verifier::from_config(&c).unwrap()
    }

    fn sign(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    /// Another valid base64url text of the same length (the first character changed).
    fn flip_first(sig: &str) -> String {
        let first = if sig.starts_with('A') { "B" } else { "A" };
        format!("{first}{}", &sig[1..])
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    /// A token from raw header and claims text, correctly signed with `SECRET`.
    fn raw(header: &str, claims: &str) -> String {
        let message = format!("{}.{}", b64(header), b64(claims));
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{message}.{sig}")
    }

    const HS: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
    /// In an expected error: any text from serde_json.
    const ANY: &str = "<any>";

    #[test]
    fn accepts_numeric_and_digit_string_subjects() {
        let v = verifier(SECRET);
        assert_eq!(
            v.verify(&mint(SECRET, UserId(42), 60).unwrap()),
            Ok(UserId(42))
        );
        assert_eq!(
            v.verify(&sign(SECRET, serde_json::json!({"sub": "7", "exp": FAR}))),
            Ok(UserId(7))
        );
    }

    #[test]
    fn refuses_bad_subjects_with_the_sub_message() {
        let v = verifier(SECRET);
        for sub in [
            serde_json::json!("alice"),
            serde_json::json!(""),
            serde_json::json!(-1),
            serde_json::json!(1.5),
            serde_json::json!(true),
            serde_json::json!("123456789012345678901"),
        ] {
            let token = sign(SECRET, serde_json::json!({"sub": sub, "exp": FAR}));
            assert_eq!(v.verify(&token), Err(AuthError::BadSubject), "{sub}");
        }
        let token = sign(SECRET, serde_json::json!({"exp": FAR}));
        let err = v.verify(&token).unwrap_err();
        assert_eq!(err, AuthError::MissingSubject);
        assert!(err.to_string().contains("sub"), "{err}");
    }

    #[test]
    fn refuses_expired_premature_foreign_and_missing() {
        let v = verifier(SECRET);
        let err = v
            .verify(&sign(SECRET, serde_json::json!({"sub": 1, "exp": 1000})))
            .unwrap_err();
        assert_eq!(err, AuthError::Expired);
        let err = v
            .verify(&sign(
                SECRET,
                serde_json::json!({"sub": 1, "exp": FAR, "nbf": FAR - 1}),
            ))
            .unwrap_err();
        assert_eq!(err, AuthError::NotYetValid);
        let other = "another-secret-0123456789abcdef0123";
        assert_eq!(
            v.verify(&mint(other, UserId(1), 60).unwrap()),
            Err(AuthError::BadSignature)
        );
        assert_eq!(v.verify(""), Err(AuthError::Missing));
    }

    #[test]
    fn each_kind_of_malformed_token_has_its_own_message() {
        let v = verifier(SECRET);
        let claims = format!(r#"{{"sub":1,"exp":{FAR}}}"#);
        let good = raw(HS, &claims);
        assert_eq!(v.verify(&good), Ok(UserId(1)));
        let (message, sig) = good.rsplit_once('.').unwrap();
        let cases: Vec<(String, AuthError)> = vec![
            ("not-a-jwt".into(), AuthError::Malformed),
            ("a.b".into(), AuthError::Malformed),
            (format!("{good}.extra"), AuthError::Malformed),
            (format!("!!.{}.x", b64(&claims)), AuthError::HeaderNotBase64),
            (
                format!("{}.{}.x", b64("{\"alg\":"), b64(&claims)),
                AuthError::HeaderNotJson("EOF while parsing a value at line 1 column 7".into()),
            ),
            (
                raw(r#"["HS256"]"#, &claims),
                AuthError::HeaderNotJson("not an object".into()),
            ),
            (
                raw(r#"{"typ":"JWT"}"#, &claims),
                AuthError::MissingAlgorithm,
            ),
            (
                raw(r#"{"alg":"none"}"#, &claims),
                AuthError::WrongAlgorithm {
                    found: "none".into(),
                    expected: "HS256",
                },
            ),
            (
                raw(r#"{"alg":5}"#, &claims),
                AuthError::WrongAlgorithm {
                    found: "5".into(),
                    expected: "HS256",
                },
            ),
            (format!("{}.!!.x", b64(HS)), AuthError::ClaimsNotBase64),
            (raw(HS, "{\"sub\":1,"), AuthError::ClaimsNotJson(ANY.into())),
            (
                raw(HS, "42"),
                AuthError::ClaimsNotJson("not an object".into()),
            ),
            (format!("{message}.!!"), AuthError::SignatureNotBase64),
            (
                format!("{message}.{}", flip_first(sig)),
                AuthError::BadSignature,
            ),
            (
                raw(HS, &format!(r#"{{"sub":1,"exp":{FAR},"aud":"chat"}}"#)),
                AuthError::Invalid("aud claim present, but no audience is configured".into()),
            ),
            (
                raw(HS, r#"{"sub":1}"#),
                AuthError::MissingClaim("exp".into()),
            ),
            (
                raw(HS, r#"{"sub":1,"exp":"tomorrow"}"#),
                AuthError::BadTimeClaim("exp".into()),
            ),
            (
                raw(HS, &format!(r#"{{"sub":1,"exp":{FAR},"nbf":"now"}}"#)),
                AuthError::BadTimeClaim("nbf".into()),
            ),
        ];
        for (token, want) in cases {
            let got = v.verify(&token).expect_err(&token);
            match (&got, &want) {
                // serde_json's wording is its own; only the kind is ours.
                (AuthError::HeaderNotJson(_), AuthError::HeaderNotJson(w))
                | (AuthError::ClaimsNotJson(_), AuthError::ClaimsNotJson(w))
                    if w == ANY => {}
                _ => assert_eq!(got, want, "{token}"),
            }
            let text = got.to_string();
            assert!(text.starts_with("authentication token "), "{text}");
            assert!(!text.contains("sub must be"), "{token}: {text}");
        }
    }

    #[test]
    fn a_standard_header_field_of_the_wrong_type_is_a_header_error() {
        let v = verifier(SECRET);
        let token = raw(
            r#"{"alg":"HS256","kid":5}"#,
            &format!(r#"{{"sub":1,"exp":{FAR}}}"#),
        );
        match v.verify(&token) {
            Err(AuthError::HeaderNotJson(why)) => assert!(why.contains("invalid type"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_crit_header_is_refused_even_when_signed() {
        let v = verifier(SECRET);
        let claims = serde_json::json!({"sub": 1, "exp": FAR});
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".into()]);
        let token = encode(
            &header,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&token), Err(AuthError::CriticalHeader));
        // An empty list is refused too (RFC 7515 forbids it).
        let token = raw(
            r#"{"alg":"HS256","crit":[]}"#,
            &format!(r#"{{"sub":1,"exp":{FAR}}}"#),
        );
        let err = v.verify(&token).unwrap_err();
        assert_eq!(err, AuthError::CriticalHeader);
        assert!(err.to_string().contains("crit"), "{err}");
    }

    #[test]
    fn a_long_foreign_alg_is_cut_in_the_message() {
        let v = verifier(SECRET);
        let alg = "é".repeat(40);
        let token = raw(&format!(r#"{{"alg":"{alg}"}}"#), "{}");
        match v.verify(&token) {
            Err(AuthError::WrongAlgorithm { found, .. }) => {
                assert!(
                    found.len() <= MAX_ECHO && alg.starts_with(&found),
                    "{found}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    fn config(secret: Option<&str>, listen: &str) -> Config {
        let mut c = Config::default();
        c.auth.jwt_secret = secret.map(String::from);
        c.server.listen = listen.parse().unwrap();
        c
    }

    #[test]
    fn the_development_secret_is_refused_off_loopback() {
        for listen in [
            "127.0.0.1:3000",
            "127.9.9.9:0",
            "[::1]:3000",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(secret_problem(&config(None, listen)), None, "{listen}");
        }
        for listen in ["0.0.0.0:3000", "10.1.2.3:3000", "[::]:3000"] {
            for secret in [None, Some(DEV_JWT_SECRET)] {
                let problem = secret_problem(&config(secret, listen)).expect(listen);
                assert!(
                    problem.contains("CORECAST_JWT_SECRET") && problem.contains("development"),
                    "{problem}"
                );
                let err = Verifier::from_config(&config(secret, listen))
                    .err()
                    .unwrap();
                assert!(err.to_string().contains("CORECAST_JWT_SECRET"), "{err}");
            }
            assert_eq!(secret_problem(&config(Some(SECRET), listen)), None);
        }
    }

    #[test]
    fn a_short_secret_is_refused_on_any_listener() {
        for listen in ["127.0.0.1:3000", "0.0.0.0:3000"] {
            let short = "a".repeat(MIN_HS256_SECRET_BYTES - 1);
            let problem = secret_problem(&config(Some(&short), listen)).expect(listen);
            assert!(
                problem.contains("CORECAST_JWT_SECRET") && problem.contains("31 bytes"),
                "{problem}"
            );
            assert!(Verifier::from_config(&config(Some(&short), listen)).is_err());
            let enough = "a".repeat(MIN_HS256_SECRET_BYTES);
            assert_eq!(secret_problem(&config(Some(&enough), listen)), None);
        }
        // Public-key algorithms use no secret.
        let mut c = config(Some("short"), "0.0.0.0:3000");
        c.auth.jwt_algorithm = JwtAlgorithm::RS256;
        assert_eq!(secret_problem(&c), None);
    }
}

#[cfg(test)]
mod public_key_tests {
    //! RS256 and ES256 with the test key pairs in `gateway/tests/keys/` (made with openssl for
    //! these tests only).
    use super::*;
    use crate::config::JwtAlgorithm;

    fn keys(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name)
    }

    fn verifier(alg: JwtAlgorithm, public: &str) -> Verifier {
        let mut c = Config::default();
        c.auth.jwt_algorithm = alg;
        c.auth.jwt_public_key_file = Some(keys(public));
        Verifier::from_config(&c).unwrap()
    }

    fn sign(alg: Algorithm, key: EncodingKey, sub: u64) -> String {
        let claims = serde_json::json!({"sub": sub, "exp": 4_000_000_000u64});
        encode(&Header::new(alg), &claims, &key).unwrap()
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_their_public_keys_only() {
        let rsa =
            EncodingKey::from_rsa_pem(&std::fs::read(keys("rs256-private.pem")).unwrap()).unwrap();
        let ec =
            EncodingKey::from_ec_pem(&std::fs::read(keys("es256-private.pem")).unwrap()).unwrap();
        let rs = verifier(JwtAlgorithm::RS256, "rs256-public.pem");
        let es = verifier(JwtAlgorithm::ES256, "es256-public.pem");
        assert_eq!(
            rs.verify(&sign(Algorithm::RS256, rsa.clone(), 5)),
            Ok(UserId(5))
        );
        assert_eq!(
            es.verify(&sign(Algorithm::ES256, ec.clone(), 6)),
            Ok(UserId(6))
        );
        // The algorithm is fixed by configuration: a token of another algorithm is refused,
        // and so is an HS256 token signed with the public key as a secret.
        assert_eq!(
            rs.verify(&sign(Algorithm::ES256, ec, 5)),
            Err(AuthError::WrongAlgorithm {
                found: "ES256".into(),
                expected: "RS256"
            })
        );
        let pem = std::fs::read(keys("rs256-public.pem")).unwrap();
        let forged = sign(Algorithm::HS256, EncodingKey::from_secret(&pem), 5);
        assert!(matches!(
            rs.verify(&forged),
            Err(AuthError::WrongAlgorithm { .. })
        ));
        assert!(matches!(
            es.verify(&sign(Algorithm::RS256, rsa, 6)),
            Err(AuthError::WrongAlgorithm { .. })
        ));
        // A signature from another key pair of the right algorithm.
        let other = verifier(JwtAlgorithm::ES256, "es256-public.pem");
        let mut forged = sign(
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&std::fs::read(keys("es256-private.pem")).unwrap()).unwrap(),
            6,
        );
        forged.truncate(forged.len() - 4);
        forged.push_str("AAAA");
        assert_eq!(other.verify(&forged), Err(AuthError::BadSignature));
    }

    #[test]
    fn a_missing_or_wrong_key_file_fails_at_start_with_its_name() {
        let mut c = Config::default();
        c.auth.jwt_algorithm = JwtAlgorithm::RS256;
        c.auth.jwt_public_key_file = Some(keys("nope.pem"));
        let err = Verifier::from_config(&c).err().unwrap();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        // The OS's answer stays as the source, for the binary's report.
        let source = std::error::Error::source(&err).expect("the read error");
        assert_eq!(
            source.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::NotFound),
            "{source}"
        );
        c.auth.jwt_public_key_file = Some(keys("es256-public.pem"));
        let err = Verifier::from_config(&c).err().unwrap();
        assert!(err.to_string().contains("not an RSA public key"), "{err}");
        let source = std::error::Error::source(&err).expect("jsonwebtoken's error");
        assert!(source.is::<jsonwebtoken::errors::Error>(), "{source}");
    }
}
