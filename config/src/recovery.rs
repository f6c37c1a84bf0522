//! The `[recovery]` section: connection state recovery, served from the store.

use corecast_config_value::{optional, parse};
use serde::Deserialize;

/// The `[recovery]` section.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// Connection state recovery: a client that reconnects with the `pid` and offset it was
    /// given gets the messages it missed, read from the store, and `socket.recovered`.
    #[arg(long = "recovery", env = "CORECAST_RECOVERY", action = clap::ArgAction::Set, value_parser = parse::<bool>())]
    pub enabled: bool,
    /// How far back a recovery reads, in seconds: a client whose last message (or, if it had
    /// none, its session's start) is older gets a fresh session.
    #[arg(long, env = "CORECAST_RECOVERY_MAX_AGE", value_parser = parse::<u64>())]
    pub max_age_secs: u64,
    /// The most messages one recovery replays; a client that missed more gets a fresh
    /// session.
    #[arg(long, env = "CORECAST_RECOVERY_MAX_EVENTS", value_parser = parse::<usize>())]
    pub max_events: usize,
    /// The key that signs session ids (`pid`), so that no user can present another's. When
    /// unset: the HS256 JWT secret, or with RS256/ES256 a random key per process (recovery
    /// then does not survive a restart).
    #[arg(long, env = "CORECAST_RECOVERY_SECRET", value_parser = optional::<String>())]
    pub secret: std::option::Option<String>,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            enabled: true,
            max_age_secs: 24 * 3600,
            max_events: 1000,
            secret: None,
        }
    }
}
