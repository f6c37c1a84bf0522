//! The `[notifier]` section: the notifier's SMTP server, batching, retries and listener.

use corecast_config_value::{choice, optional, parse};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// How the notifier talks to the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

/// The `[notifier]` section.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct NotifierConfig {
    /// SMTP server host.
    #[arg(long, env = "CORECAST_SMTP_HOST")]
    pub smtp_host: String,
    /// SMTP server port.
    #[arg(long, env = "CORECAST_SMTP_PORT", value_parser = parse::<u16>())]
    pub smtp_port: u16,
    /// `none`, `starttls` or `tls`.
    #[arg(long, env = "CORECAST_SMTP_TLS", value_parser = choice::<SmtpTls>())]
    pub smtp_tls: SmtpTls,
    /// SMTP user; with a password, enables authentication.
    #[arg(long, env = "CORECAST_SMTP_USER", value_parser = optional::<String>())]
    pub smtp_user: std::option::Option<String>,
    /// SMTP password.
    #[arg(long, env = "CORECAST_SMTP_PASSWORD", value_parser = optional::<String>())]
    pub smtp_password: std::option::Option<String>,
    /// Sender address.
    #[arg(long, env = "CORECAST_SMTP_FROM")]
    pub smtp_from: String,
    /// A burst of messages to one member in one group within this many seconds becomes one
    /// email.
    #[arg(long, env = "CORECAST_NOTIFY_COALESCE_SECS", value_parser = parse::<u64>())]
    pub coalesce_secs: u64,
    /// First retry delay after a temporary failure.
    #[arg(long, env = "CORECAST_NOTIFY_RETRY_INITIAL_MS", value_parser = parse::<u64>())]
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    #[arg(long, env = "CORECAST_NOTIFY_RETRY_MAX_MS", value_parser = parse::<u64>())]
    pub retry_max_ms: u64,
    /// Internal listener of the notifier (metrics, health).
    #[arg(id = "notifier_listen", long = "listen", value_name = "LISTEN", env = "CORECAST_NOTIFIER_LISTEN", value_parser = parse::<SocketAddr>())]
    pub listen: SocketAddr,
    /// Folder of optional templates `subject.txt`, `body.txt`, `body.html`.
    #[arg(long, env = "CORECAST_NOTIFY_TEMPLATES", value_parser = optional::<PathBuf>())]
    pub templates_dir: std::option::Option<PathBuf>,
    /// Public address of the chat app, used in email links.
    #[arg(long, env = "CORECAST_NOTIFY_APP_URL", value_parser = optional::<String>())]
    pub app_url: std::option::Option<String>,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            smtp_host: "127.0.0.1".into(),
            smtp_port: 25,
            smtp_tls: SmtpTls::None,
            smtp_user: None,
            smtp_password: None,
            smtp_from: "corecast <noreply@localhost>".into(),
            coalesce_secs: 60,
            retry_initial_ms: 1_000,
            retry_max_ms: 300_000,
            listen: "127.0.0.1:3002"
                .parse()
                .expect("invariant: literal address"),
            templates_dir: None,
            app_url: None,
        }
    }
}
