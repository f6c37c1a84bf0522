//! The `[limits]` section: what one user or connection may send, and how large it may be.

use corecast_config_value::{list, parse};
use serde::Deserialize;

/// The `[limits]` section.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Messages per user per minute; 0 turns the limit off.
    #[arg(long, env = "CORECAST_RATE_LIMIT_PER_MIN", value_parser = parse::<u32>())]
    pub rate_limit_per_min: u32,
    /// Client events (every event: `sendMessage`, `joinGroup`, `leaveGroup`, `markAsRead`,
    /// ...) per connection per second, sustained; more are answered `rate_limited`
    /// (0 turns the limit off).
    #[arg(long, env = "CORECAST_EVENT_RATE_PER_SEC", value_parser = parse::<u32>())]
    pub event_rate_per_sec: u32,
    /// Client events one connection may send at once above the sustained rate
    /// (at least 1 while the event limit is on).
    #[arg(long, env = "CORECAST_EVENT_BURST", value_parser = parse::<u32>())]
    pub event_burst: u32,
    /// Longest message text in characters.
    #[arg(long, env = "CORECAST_MAX_TEXT_CHARS", value_parser = parse::<usize>())]
    pub max_text_chars: usize,
    /// Most attachments on one message.
    #[arg(long, env = "CORECAST_MAX_ATTACHMENTS", value_parser = parse::<usize>())]
    pub max_attachments: usize,
    /// Allowed attachment `type` values (comma-separated).
    #[arg(long, env = "CORECAST_ATTACHMENT_TYPES", value_parser = list())]
    pub attachment_types: std::vec::Vec<String>,
    /// Longest attachment URL in bytes.
    #[arg(long, env = "CORECAST_MAX_URL_LEN", value_parser = parse::<usize>())]
    pub max_url_len: usize,
    /// Longest `clientMsgId` in bytes.
    #[arg(long, env = "CORECAST_MAX_CLIENT_MSG_ID_LEN", value_parser = parse::<usize>())]
    pub max_client_msg_id_len: usize,
    /// Longest group id in bytes of UTF-8, in events and in admin URLs; 1 to 1024.
    #[arg(long, env = "CORECAST_MAX_GROUP_ID_BYTES", value_parser = parse::<usize>())]
    pub max_group_id_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            rate_limit_per_min: 30,
            event_rate_per_sec: 20,
            event_burst: 40,
            max_text_chars: 4000,
            max_attachments: 10,
            attachment_types: ["image", "video", "audio", "file"]
                .map(String::from)
                .to_vec(),
            max_url_len: 2048,
            max_client_msg_id_len: 128,
            max_group_id_bytes: corecast_storage::GroupId::MAX_BYTES,
        }
    }
}
