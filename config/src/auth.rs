//! The `[auth]` section: how the gateway checks a client's JWT, and the admin API's token.

use corecast_config_value::{choice, optional};
use serde::Deserialize;
use std::path::PathBuf;

/// The development secret used when none is configured. Printed loudly at start.
pub const DEV_JWT_SECRET: &str = "corecast-development-secret-do-not-use-in-production";

/// How tokens are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

/// The `[auth]` section.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `HS256` (shared secret), `RS256` or `ES256` (public key).
    #[arg(long, env = "CORECAST_JWT_ALGORITHM", value_parser = choice::<JwtAlgorithm>())]
    pub jwt_algorithm: JwtAlgorithm,
    /// HS256 secret, at least 32 bytes. When unset a development
    /// secret is used and a warning printed; it is refused unless `server.listen` is a
    /// loopback address (`auth::secret_problem`).
    #[arg(long, env = "CORECAST_JWT_SECRET", value_parser = optional::<String>())]
    pub jwt_secret: std::option::Option<String>,
    /// PEM public key file for RS256/ES256.
    #[arg(long, env = "CORECAST_JWT_PUBLIC_KEY_FILE", value_parser = optional::<PathBuf>())]
    pub jwt_public_key_file: std::option::Option<PathBuf>,
    /// Bearer token of the internal admin API. When unset the admin
    /// endpoints refuse every request; health and metrics stay open.
    #[arg(long, env = "CORECAST_ADMIN_TOKEN", value_parser = optional::<String>())]
    pub admin_token: std::option::Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_algorithm: JwtAlgorithm::HS256,
            jwt_secret: None,
            jwt_public_key_file: None,
            admin_token: None,
        }
    }
}
