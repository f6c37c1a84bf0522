//! JWT verification for the Socket.IO CONNECT packet, and minting of development tokens.
//!
//! The algorithm is fixed by configuration (never taken from the token's header), `exp` and
//! `nbf` are enforced, and `sub` (a number or a string of digits) is the user id.

use crate::config::{Config, JwtAlgorithm};
use anyhow::{Context, Result};
use corecast_storage::UserId;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Verifies tokens. Built once at start; shared read-only by every shard.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: Sub,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Sub {
    Number(u64),
    Text(String),
}

/// Why a token was refused; the text goes to the client in CONNECT_ERROR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("authentication token missing: send {{ token }} in the Socket.IO auth payload")]
    Missing,
    #[error("authentication token expired")]
    Expired,
    #[error("authentication token not yet valid (nbf)")]
    NotYetValid,
    #[error("authentication token invalid: {0}")]
    Invalid(String),
    #[error(
        "authentication token invalid: sub must be a user id (a number or a string of digits)"
    )]
    BadSubject,
}

impl Verifier {
    pub fn from_config(config: &Config) -> Result<Verifier> {
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
                    .context("auth.jwt_public_key_file is required for RS256/ES256")?;
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read JWT public key {}", path.display()))?;
                if alg == JwtAlgorithm::RS256 {
                    let key = DecodingKey::from_rsa_pem(&pem).with_context(|| {
                        format!("{} is not an RSA public key in PEM", path.display())
                    })?;
                    (key, Algorithm::RS256)
                } else {
                    let key = DecodingKey::from_ec_pem(&pem).with_context(|| {
                        format!("{} is not an EC (P-256) public key in PEM", path.display())
                    })?;
                    (key, Algorithm::ES256)
                }
            }
        };
        let mut validation = Validation::new(alg);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.required_spec_claims = ["exp"].iter().map(|s| s.to_string()).collect();
        Ok(Verifier { key, validation })
    }

    /// Verifies `token` and returns its user.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data =
            decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::Json(_) => AuthError::BadSubject,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        match data.claims.sub {
            Sub::Number(n) => Ok(UserId(n)),
            Sub::Text(s)
                if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) =>
            {
                s.parse().map(UserId).map_err(|_| AuthError::BadSubject)
            }
            Sub::Text(_) => Err(AuthError::BadSubject),
        }
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
        .context("clock before 1970")?
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
    .context("cannot sign token")
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn accepts_numeric_and_digit_string_subjects() {
        let v = verifier("s");
        assert_eq!(
            v.verify(&mint("s", UserId(42), 60).unwrap()),
            Ok(UserId(42))
        );
        let far = 4_000_000_000u64;
        assert_eq!(
            v.verify(&sign("s", serde_json::json!({"sub": "7", "exp": far}))),
            Ok(UserId(7))
        );
        assert_eq!(
            v.verify(&sign("s", serde_json::json!({"sub": "alice", "exp": far}))),
            Err(AuthError::BadSubject)
        );
    }

    #[test]
    fn refuses_expired_premature_foreign_and_missing() {
        let v = verifier("s");
        let err = v
            .verify(&sign("s", serde_json::json!({"sub": 1, "exp": 1000})))
            .unwrap_err();
        assert_eq!(err, AuthError::Expired);
        let far = 4_000_000_000u64;
        let err = v
            .verify(&sign(
                "s",
                serde_json::json!({"sub": 1, "exp": far, "nbf": far - 1}),
            ))
            .unwrap_err();
        assert_eq!(err, AuthError::NotYetValid);
        assert!(matches!(
            v.verify(&mint("other", UserId(1), 60).unwrap()),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(v.verify(""), Err(AuthError::Missing));
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
        assert!(matches!(
            rs.verify(&sign(Algorithm::ES256, ec, 5)),
            Err(AuthError::Invalid(_))
        ));
        let pem = std::fs::read(keys("rs256-public.pem")).unwrap();
        let forged = sign(Algorithm::HS256, EncodingKey::from_secret(&pem), 5);
        assert!(matches!(rs.verify(&forged), Err(AuthError::Invalid(_))));
        assert!(matches!(
            es.verify(&sign(Algorithm::RS256, rsa, 6)),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn a_missing_or_wrong_key_file_fails_at_start_with_its_name() {
        let mut c = Config::default();
        c.auth.jwt_algorithm = JwtAlgorithm::RS256;
        c.auth.jwt_public_key_file = Some(keys("nope.pem"));
        let err = Verifier::from_config(&c).err().unwrap();
        assert!(format!("{err:#}").contains("nope.pem"), "{err:#}");
        c.auth.jwt_public_key_file = Some(keys("es256-public.pem"));
        let err = Verifier::from_config(&c).err().unwrap();
        assert!(
            format!("{err:#}").contains("not an RSA public key"),
            "{err:#}"
        );
    }
}
