//! The one configuration of corecast, shared by the gateway and the notifier: a TOML file
//! (`--config`), overridden by `CORECAST_*` environment variables, overridden by flags.
//!
//! Every key that can be overridden has one entry in [`OVERRIDES`], named by its environment
//! variable; flags are applied through the same table, so a key is parsed and validated in one
//! place. [`Config::validate`] runs once at start and names the bad key in its error.

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use corecast_storage::{StoreConfig, StoreKind};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub store: StoreConfig,
    pub notifier: NotifierConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public Socket.IO listener (`CORECAST_LISTEN`).
    pub listen: SocketAddr,
    /// Internal admin/metrics/health listener (`CORECAST_INTERNAL_LISTEN`).
    pub internal_listen: SocketAddr,
    /// Threads answering internal requests; more complete requests wait in a queue of 32,
    /// beyond which they get 503 (`CORECAST_ADMIN_THREADS`).
    pub admin_threads: usize,
    /// Internal connections being read at once; one more is answered 503 and closed
    /// (`CORECAST_ADMIN_MAX_CONNECTIONS`).
    pub admin_max_connections: usize,
    /// Time from accept for a whole internal request to arrive, then answered 408; also how
    /// long an answer may take to be read (`CORECAST_ADMIN_REQUEST_TIMEOUT_MS`).
    pub admin_request_timeout_ms: u64,
    /// Number of shards; 0 means one per online core (`CORECAST_SHARDS`).
    pub shards: usize,
    /// The Engine.IO path (`CORECAST_PATH`).
    pub path: String,
    /// Origins allowed to connect, on both transports; empty allows any
    /// (`CORECAST_ALLOWED_ORIGINS`, comma-separated). A request without an `Origin` header
    /// (native, mobile and server clients) is not cross-origin and always accepted.
    pub allowed_origins: Vec<String>,
    /// The Engine.IO transports served: `polling`, `websocket` or both
    /// (`CORECAST_TRANSPORTS`, comma-separated; default both, as the official server).
    pub transports: Vec<String>,
    /// How long an upgrade probe may take from the WebSocket request to the client's upgrade
    /// packet (`CORECAST_UPGRADE_TIMEOUT_MS`; the reference server's `upgradeTimeout`).
    pub upgrade_timeout_ms: u64,
    /// How long a TCP connection may take to send a complete HTTP request head, the first one
    /// and each one after on a kept-alive connection (`CORECAST_HANDSHAKE_TIMEOUT_MS`).
    pub handshake_timeout_ms: u64,
    /// Connections that have not logged in yet (waiting for a request head or for CONNECT),
    /// at most, over all shards; at the cap a new one evicts the oldest
    /// (`CORECAST_MAX_PENDING_CONNECTIONS`; see gateway/src/admission.rs).
    pub max_pending_connections: usize,
    /// Of those, at most this many from one client IP; more are refused with 503
    /// (`CORECAST_MAX_PENDING_PER_IP`; 0 = no per-address cap, e.g. behind a proxy that
    /// hides client addresses).
    pub max_pending_per_ip: u32,
    /// Accepted TCP connections per second at most, over all shards; more wait in the kernel's
    /// backlog (`CORECAST_ACCEPT_RATE`; 0 = no limit).
    pub accept_rate: u32,
    /// On SIGTERM (or `POST /api/drain`), connections close spread over this many seconds, so
    /// their clients reconnect spread out (`CORECAST_DRAIN_SECS`; 0 closes all at once).
    pub drain_secs: u64,
    /// How often the server pings each client (`CORECAST_PING_INTERVAL_MS`).
    pub ping_interval_ms: u64,
    /// How long a client has to answer a ping (`CORECAST_PING_TIMEOUT_MS`).
    pub ping_timeout_ms: u64,
    /// How long a new WebSocket may stay without a Socket.IO CONNECT
    /// (`CORECAST_CONNECT_TIMEOUT_MS`).
    pub connect_timeout_ms: u64,
    /// Largest incoming message in bytes, announced as `maxPayload`
    /// (`CORECAST_MAX_PAYLOAD`).
    pub max_payload: usize,
    /// Bytes queued for one client before it is disconnected as too slow
    /// (`CORECAST_OUTBOUND_QUEUE_BYTES`).
    pub outbound_queue_bytes: usize,
    /// Rooms with at least this many members connected to one shard are paced: their frames
    /// gather for `pacing_window_ms` and go out several per send (`CORECAST_PACED_ROOM_MEMBERS`;
    /// 0 turns pacing off).
    pub paced_room_members: usize,
    /// How long a paced room's frames gather (`CORECAST_PACING_WINDOW_MS`).
    pub pacing_window_ms: u64,
    /// Each shard hands its batch of sends to the kernel in one io_uring submission
    /// (`CORECAST_SEND_RING`). `false` sends the same batch with one `send(2)` per connection,
    /// for a kernel or sandbox where io_uring sends misbehave; it costs about 1 µs of CPU more
    /// per send (docs/benchmarks.md). Without io_uring for sends, that is what happens anyway.
    pub send_ring: bool,
    /// Serve the demo chat page at `/demo/` on the internal listener (`CORECAST_DEMO`).
    pub demo: bool,
    /// A room (a group's members and subscriber counts, on its owner shard) with no
    /// subscriber and nothing in flight is forgotten after this many seconds idle, and loaded
    /// from the store again when next used (`CORECAST_IDLE_ROOM_SECS`; at least 1).
    pub idle_room_secs: u64,
    /// A user's last connection closing is announced (`userOnline` false, and the stored
    /// presence) only once they have stayed away this long; coming back sooner announces
    /// nothing (`CORECAST_PRESENCE_DEBOUNCE_MS`; 0 announces at once; at most 60000).
    pub presence_debounce_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `HS256` (shared secret), `RS256` or `ES256` (public key) (`CORECAST_JWT_ALGORITHM`).
    pub jwt_algorithm: JwtAlgorithm,
    /// HS256 secret (`CORECAST_JWT_SECRET`), at least 32 bytes. When unset a development
    /// secret is used and a warning printed; it is refused unless `server.listen` is a
    /// loopback address (`auth::secret_problem`).
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS256/ES256 (`CORECAST_JWT_PUBLIC_KEY_FILE`).
    pub jwt_public_key_file: Option<PathBuf>,
    /// Bearer token of the internal admin API (`CORECAST_ADMIN_TOKEN`). When unset the admin
    /// endpoints refuse every request; health and metrics stay open.
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Messages per user per minute; 0 turns the limit off (`CORECAST_RATE_LIMIT_PER_MIN`).
    pub rate_limit_per_min: u32,
    /// Client events (every event: `sendMessage`, `joinGroup`, `leaveGroup`, `markAsRead`,
    /// ...) per connection per second, sustained; more are answered `rate_limited`
    /// (`CORECAST_EVENT_RATE_PER_SEC`; 0 turns the limit off).
    pub event_rate_per_sec: u32,
    /// Client events one connection may send at once above the sustained rate
    /// (`CORECAST_EVENT_BURST`; at least 1 while the event limit is on).
    pub event_burst: u32,
    /// Longest message text in characters (`CORECAST_MAX_TEXT_CHARS`).
    pub max_text_chars: usize,
    /// Most attachments on one message (`CORECAST_MAX_ATTACHMENTS`).
    pub max_attachments: usize,
    /// Allowed attachment `type` values (`CORECAST_ATTACHMENT_TYPES`, comma-separated).
    pub attachment_types: Vec<String>,
    /// Longest attachment URL in bytes (`CORECAST_MAX_URL_LEN`).
    pub max_url_len: usize,
    /// Longest `clientMsgId` in bytes (`CORECAST_MAX_CLIENT_MSG_ID_LEN`).
    pub max_client_msg_id_len: usize,
    /// Longest group id in bytes of UTF-8, in events and in admin URLs
    /// (`CORECAST_MAX_GROUP_ID_BYTES`); 1 to 1024.
    pub max_group_id_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifierConfig {
    /// SMTP server host (`CORECAST_SMTP_HOST`).
    pub smtp_host: String,
    /// SMTP server port (`CORECAST_SMTP_PORT`).
    pub smtp_port: u16,
    /// `none`, `starttls` or `tls` (`CORECAST_SMTP_TLS`).
    pub smtp_tls: SmtpTls,
    /// SMTP user; with a password, enables authentication (`CORECAST_SMTP_USER`).
    pub smtp_user: Option<String>,
    /// SMTP password (`CORECAST_SMTP_PASSWORD`).
    pub smtp_password: Option<String>,
    /// Sender address (`CORECAST_SMTP_FROM`).
    pub smtp_from: String,
    /// A burst of messages to one member in one group within this many seconds becomes one
    /// email (`CORECAST_NOTIFY_COALESCE_SECS`).
    pub coalesce_secs: u64,
    /// First retry delay after a temporary failure (`CORECAST_NOTIFY_RETRY_INITIAL_MS`).
    pub retry_initial_ms: u64,
    /// Longest retry delay (`CORECAST_NOTIFY_RETRY_MAX_MS`).
    pub retry_max_ms: u64,
    /// Internal listener of the notifier (metrics, health) (`CORECAST_NOTIFIER_LISTEN`).
    pub listen: SocketAddr,
    /// Folder of optional templates `subject.txt`, `body.txt`, `body.html`
    /// (`CORECAST_NOTIFY_TEMPLATES`).
    pub templates_dir: Option<PathBuf>,
    /// Public address of the chat app, used in email links (`CORECAST_NOTIFY_APP_URL`).
    pub app_url: Option<String>,
}

impl ServerConfig {
    pub fn polling_enabled(&self) -> bool {
        self.transports.iter().any(|t| t == "polling")
    }

    pub fn websocket_enabled(&self) -> bool {
        self.transports.iter().any(|t| t == "websocket")
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:3000"
                .parse()
                .expect("invariant: literal address"),
            internal_listen: "127.0.0.1:3001"
                .parse()
                .expect("invariant: literal address"),
            admin_threads: 4,
            admin_max_connections: 256,
            admin_request_timeout_ms: 10_000,
            shards: 0,
            path: "/socket.io/".into(),
            allowed_origins: Vec::new(),
            transports: vec!["polling".into(), "websocket".into()],
            upgrade_timeout_ms: 10_000,
            handshake_timeout_ms: 10_000,
            max_pending_connections: 10_000,
            max_pending_per_ip: 1_000,
            accept_rate: 20_000,
            drain_secs: 10,
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            connect_timeout_ms: 45_000,
            max_payload: 1_000_000,
            outbound_queue_bytes: 4 << 20,
            paced_room_members: 1_000,
            pacing_window_ms: 50,
            send_ring: true,
            demo: true,
            idle_room_secs: 300,
            presence_debounce_ms: 1_500,
        }
    }
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

/// The development secret used when none is configured. Printed loudly at start.
pub const DEV_JWT_SECRET: &str = "corecast-development-secret-do-not-use-in-production";

type Setter = fn(&mut Config, &str) -> Result<()>;

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn parse<T: std::str::FromStr>(v: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    v.trim().parse::<T>().map_err(|e| anyhow!("{e}"))
}

fn parse_enum<T: for<'de> Deserialize<'de>>(v: &str) -> Result<T> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(v.trim()))
        .map_err(|e| anyhow!("{e}"))
}

fn opt(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

/// Every overridable key: its environment variable and how to apply a value.
pub const OVERRIDES: &[(&str, Setter)] = &[
    ("CORECAST_LISTEN", |c, v| {
        c.server.listen = parse(v)?;
        Ok(())
    }),
    ("CORECAST_INTERNAL_LISTEN", |c, v| {
        c.server.internal_listen = parse(v)?;
        Ok(())
    }),
    ("CORECAST_ADMIN_THREADS", |c, v| {
        c.server.admin_threads = parse(v)?;
        Ok(())
    }),
    ("CORECAST_ADMIN_MAX_CONNECTIONS", |c, v| {
        c.server.admin_max_connections = parse(v)?;
        Ok(())
    }),
    ("CORECAST_ADMIN_REQUEST_TIMEOUT_MS", |c, v| {
        c.server.admin_request_timeout_ms = parse(v)?;
        Ok(())
    }),
    ("CORECAST_SHARDS", |c, v| {
        c.server.shards = parse(v)?;
        Ok(())
    }),
    ("CORECAST_PATH", |c, v| {
        c.server.path = v.to_string();
        Ok(())
    }),
    ("CORECAST_ALLOWED_ORIGINS", |c, v| {
        c.server.allowed_origins = list(v);
        Ok(())
    }),
    ("CORECAST_TRANSPORTS", |c, v| {
        c.server.transports = list(v);
        Ok(())
    }),
    ("CORECAST_UPGRADE_TIMEOUT_MS", |c, v| {
        c.server.upgrade_timeout_ms = parse(v)?;
        Ok(())
    }),
    ("CORECAST_HANDSHAKE_TIMEOUT_MS", |c, v| {
        c.server.handshake_timeout_ms = parse(v)?;
        Ok(())
    }),
    ("CORECAST_MAX_PENDING_CONNECTIONS", |c, v| {
        c.server.max_pending_connections = parse(v)?;
        Ok(())
    }),
    ("CORECAST_MAX_PENDING_PER_IP", |c, v| {
        c.server.max_pending_per_ip = parse(v)?;
        Ok(())
    }),
    ("CORECAST_ACCEPT_RATE", |c, v| {
        c.server.accept_rate = parse(v)?;
        Ok(())
    }),
    ("CORECAST_DRAIN_SECS", |c, v| {
        c.server.drain_secs = parse(v)?;
        Ok(())
    }),
    ("CORECAST_PING_INTERVAL_MS", |c, v| {
        c.server.ping_interval_ms = parse(v)?;
        Ok(())
    }),
    ("CORECAST_PING_TIMEOUT_MS", |c, v| {
        c.server.ping_timeout_ms = parse(v)?;
        Ok(())
    }),
    ("CORECAST_CONNECT_TIMEOUT_MS", |c, v| {
        c.server.connect_timeout_ms = parse(v)?;
        Ok(())
    }),
    ("CORECAST_MAX_PAYLOAD", |c, v| {
        c.server.max_payload = parse(v)?;
        Ok(())
    }),
    ("CORECAST_OUTBOUND_QUEUE_BYTES", |c, v| {
        c.server.outbound_queue_bytes = parse(v)?;
        Ok(())
    }),
    ("CORECAST_PACED_ROOM_MEMBERS", |c, v| {
        c.server.paced_room_members = parse(v)?;
        Ok(())
    }),
    ("CORECAST_PACING_WINDOW_MS", |c, v| {
        c.server.pacing_window_ms = parse(v)?;
        Ok(())
    }),
    ("CORECAST_SEND_RING", |c, v| {
        c.server.send_ring = parse(v)?;
        Ok(())
    }),
    ("CORECAST_DEMO", |c, v| {
        c.server.demo = parse(v)?;
        Ok(())
    }),
    ("CORECAST_IDLE_ROOM_SECS", |c, v| {
        c.server.idle_room_secs = parse(v)?;
        Ok(())
    }),
    ("CORECAST_PRESENCE_DEBOUNCE_MS", |c, v| {
        c.server.presence_debounce_ms = parse(v)?;
        Ok(())
    }),
    ("CORECAST_JWT_ALGORITHM", |c, v| {
        c.auth.jwt_algorithm = parse_enum(v)?;
        Ok(())
    }),
    ("CORECAST_JWT_SECRET", |c, v| {
        c.auth.jwt_secret = opt(v);
        Ok(())
    }),
    ("CORECAST_JWT_PUBLIC_KEY_FILE", |c, v| {
        c.auth.jwt_public_key_file = opt(v).map(Into::into);
        Ok(())
    }),
    ("CORECAST_ADMIN_TOKEN", |c, v| {
        c.auth.admin_token = opt(v);
        Ok(())
    }),
    ("CORECAST_RATE_LIMIT_PER_MIN", |c, v| {
        c.limits.rate_limit_per_min = parse(v)?;
        Ok(())
    }),
    ("CORECAST_EVENT_RATE_PER_SEC", |c, v| {
        c.limits.event_rate_per_sec = parse(v)?;
        Ok(())
    }),
    ("CORECAST_EVENT_BURST", |c, v| {
        c.limits.event_burst = parse(v)?;
        Ok(())
    }),
    ("CORECAST_MAX_TEXT_CHARS", |c, v| {
        c.limits.max_text_chars = parse(v)?;
        Ok(())
    }),
    ("CORECAST_MAX_ATTACHMENTS", |c, v| {
        c.limits.max_attachments = parse(v)?;
        Ok(())
    }),
    ("CORECAST_ATTACHMENT_TYPES", |c, v| {
        c.limits.attachment_types = list(v);
        Ok(())
    }),
    ("CORECAST_MAX_URL_LEN", |c, v| {
        c.limits.max_url_len = parse(v)?;
        Ok(())
    }),
    ("CORECAST_MAX_CLIENT_MSG_ID_LEN", |c, v| {
        c.limits.max_client_msg_id_len = parse(v)?;
        Ok(())
    }),
    ("CORECAST_MAX_GROUP_ID_BYTES", |c, v| {
        c.limits.max_group_id_bytes = parse(v)?;
        Ok(())
    }),
    ("CORECAST_STORE", |c, v| {
        c.store.kind = parse_enum(v)?;
        Ok(())
    }),
    ("CORECAST_DATA_DIR", |c, v| {
        c.store.data_dir = v.into();
        Ok(())
    }),
    ("CORECAST_SCYLLA_NODES", |c, v| {
        c.store.scylla_nodes = list(v);
        Ok(())
    }),
    ("CORECAST_SCYLLA_KEYSPACE", |c, v| {
        c.store.scylla_keyspace = v.to_string();
        Ok(())
    }),
    ("CORECAST_SCYLLA_REPLICATION", |c, v| {
        c.store.scylla_replication = v.to_string();
        Ok(())
    }),
    ("CORECAST_SCYLLA_CONSISTENCY", |c, v| {
        c.store.scylla_consistency = v.to_string();
        Ok(())
    }),
    ("CORECAST_SCYLLA_LOCAL_DC", |c, v| {
        c.store.scylla_local_dc = opt(v);
        Ok(())
    }),
    ("CORECAST_SCYLLA_MIGRATE", |c, v| {
        c.store.migrate_on_start = parse(v)?;
        Ok(())
    }),
    ("CORECAST_SMTP_HOST", |c, v| {
        c.notifier.smtp_host = v.to_string();
        Ok(())
    }),
    ("CORECAST_SMTP_PORT", |c, v| {
        c.notifier.smtp_port = parse(v)?;
        Ok(())
    }),
    ("CORECAST_SMTP_TLS", |c, v| {
        c.notifier.smtp_tls = parse_enum(v)?;
        Ok(())
    }),
    ("CORECAST_SMTP_USER", |c, v| {
        c.notifier.smtp_user = opt(v);
        Ok(())
    }),
    ("CORECAST_SMTP_PASSWORD", |c, v| {
        c.notifier.smtp_password = opt(v);
        Ok(())
    }),
    ("CORECAST_SMTP_FROM", |c, v| {
        c.notifier.smtp_from = v.to_string();
        Ok(())
    }),
    ("CORECAST_NOTIFY_COALESCE_SECS", |c, v| {
        c.notifier.coalesce_secs = parse(v)?;
        Ok(())
    }),
    ("CORECAST_NOTIFY_RETRY_INITIAL_MS", |c, v| {
        c.notifier.retry_initial_ms = parse(v)?;
        Ok(())
    }),
    ("CORECAST_NOTIFY_RETRY_MAX_MS", |c, v| {
        c.notifier.retry_max_ms = parse(v)?;
        Ok(())
    }),
    ("CORECAST_NOTIFIER_LISTEN", |c, v| {
        c.notifier.listen = parse(v)?;
        Ok(())
    }),
    ("CORECAST_NOTIFY_TEMPLATES", |c, v| {
        c.notifier.templates_dir = opt(v).map(Into::into);
        Ok(())
    }),
    ("CORECAST_NOTIFY_APP_URL", |c, v| {
        c.notifier.app_url = opt(v);
        Ok(())
    }),
];

impl Config {
    /// Loads the file (if any), then the environment, then `flags` (pairs of an environment
    /// variable name from [`OVERRIDES`] and a value), and validates the result.
    pub fn load(file: Option<&std::path::Path>, flags: &[(&str, String)]) -> Result<Config> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => Config::default(),
        };
        for (name, set) in OVERRIDES {
            if let Ok(v) = std::env::var(name) {
                set(&mut config, &v).with_context(|| format!("invalid value {v:?} for {name}"))?;
            }
        }
        for (name, v) in flags {
            let (_, set) = OVERRIDES
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| anyhow!("invariant: flag mapped to unknown key {name}"))?;
            set(&mut config, v).with_context(|| format!("invalid value {v:?} for {name}"))?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense; names the key in the error.
    pub fn validate(&self) -> Result<()> {
        let s = &self.server;
        if !s.path.starts_with('/') {
            bail!(
                "server.path (CORECAST_PATH) must start with '/', got {:?}",
                s.path
            );
        }
        if s.paced_room_members > 0 && !(1..=1_000).contains(&s.pacing_window_ms) {
            bail!("server.pacing_window_ms must be between 1 and 1000 while pacing is on");
        }
        if s.ping_interval_ms == 0 || s.ping_timeout_ms == 0 {
            bail!("server.ping_interval_ms and server.ping_timeout_ms must be above 0");
        }
        if s.transports.is_empty() {
            bail!("server.transports (CORECAST_TRANSPORTS) must name at least one transport: polling, websocket");
        }
        if let Some(t) = s
            .transports
            .iter()
            .find(|t| *t != "polling" && *t != "websocket")
        {
            bail!("server.transports (CORECAST_TRANSPORTS): unknown transport {t:?}; use polling, websocket or both");
        }
        if s.max_pending_connections == 0 {
            bail!("server.max_pending_connections (CORECAST_MAX_PENDING_CONNECTIONS) must be at least 1");
        }
        if s.handshake_timeout_ms == 0 {
            bail!("server.handshake_timeout_ms (CORECAST_HANDSHAKE_TIMEOUT_MS) must be at least 1");
        }
        if s.max_payload < 64 {
            bail!("server.max_payload (CORECAST_MAX_PAYLOAD) must be at least 64 bytes");
        }
        if !(1..=256).contains(&s.admin_threads) {
            bail!(
                "server.admin_threads (CORECAST_ADMIN_THREADS) must be between 1 and 256, got {}",
                s.admin_threads
            );
        }
        if s.admin_max_connections == 0 || s.admin_request_timeout_ms == 0 {
            bail!(
                "server.admin_max_connections (CORECAST_ADMIN_MAX_CONNECTIONS) and \
                 server.admin_request_timeout_ms (CORECAST_ADMIN_REQUEST_TIMEOUT_MS) must be above 0"
            );
        }
        if s.shards > 256 {
            bail!(
                "server.shards (CORECAST_SHARDS) must be at most 256, got {}",
                s.shards
            );
        }
        if s.idle_room_secs == 0 {
            bail!("server.idle_room_secs (CORECAST_IDLE_ROOM_SECS) must be at least 1");
        }
        if s.presence_debounce_ms > 60_000 {
            bail!(
                "server.presence_debounce_ms (CORECAST_PRESENCE_DEBOUNCE_MS) must be at most \
                 60000, got {}",
                s.presence_debounce_ms
            );
        }
        if self.limits.event_rate_per_sec > 0 && self.limits.event_burst == 0 {
            bail!(
                "limits.event_burst (CORECAST_EVENT_BURST) must be at least 1 while \
                 limits.event_rate_per_sec (CORECAST_EVENT_RATE_PER_SEC) is on"
            );
        }
        if self.auth.jwt_algorithm != JwtAlgorithm::HS256 && self.auth.jwt_public_key_file.is_none()
        {
            bail!(
                "auth.jwt_algorithm {:?} needs auth.jwt_public_key_file (CORECAST_JWT_PUBLIC_KEY_FILE)",
                self.auth.jwt_algorithm
            );
        }
        let limit = corecast_storage::GroupId::LIMIT_BYTES;
        if !(1..=limit).contains(&self.limits.max_group_id_bytes) {
            bail!(
                "limits.max_group_id_bytes (CORECAST_MAX_GROUP_ID_BYTES) must be between 1 and \
                 {limit}, got {}",
                self.limits.max_group_id_bytes
            );
        }
        self.store.validate().map_err(|e| anyhow!(e))?;
        Ok(())
    }

    /// The HS256 secret in force and whether it is the development default.
    pub fn jwt_secret(&self) -> (&str, bool) {
        match &self.auth.jwt_secret {
            Some(s) => (s, false),
            None => (DEV_JWT_SECRET, true),
        }
    }
}

/// The logging both binaries install: `tracing` to stderr, filtered by `RUST_LOG`
/// (default `info`). Only binaries call this; the libraries never install a subscriber.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags_with_the_key_named_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nshards = 3\n[limits]\nrate_limit_per_min = 5\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), &[("CORECAST_SHARDS", "2".into())]).unwrap();
        assert_eq!(c.server.shards, 2);
        assert_eq!(c.limits.rate_limit_per_min, 5);
        let err = Config::load(Some(&path), &[("CORECAST_SHARDS", "two".into())]).unwrap_err();
        assert!(format!("{err:#}").contains("CORECAST_SHARDS"));
        std::fs::write(&path, "[server]\nshardz = 3\n").unwrap();
        let err = Config::load(Some(&path), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("shardz"), "{err:#}");
    }

    #[test]
    fn pacing_window_out_of_range_is_refused_unless_pacing_is_off() {
        let load = |members: &str, window: &str| {
            Config::load(
                None,
                &[
                    ("CORECAST_PACED_ROOM_MEMBERS", members.into()),
                    ("CORECAST_PACING_WINDOW_MS", window.into()),
                ],
            )
            .and_then(|c| c.validate().map(|_| c))
        };
        for window in ["0", "1001"] {
            let err = load("1000", window).unwrap_err();
            assert!(format!("{err:#}").contains("pacing_window_ms"), "{err:#}");
        }
        let c = load("1000", "20").unwrap();
        assert_eq!(
            (c.server.paced_room_members, c.server.pacing_window_ms),
            (1000, 20)
        );
        assert!(
            load("0", "0").is_ok(),
            "pacing off: the window does not matter"
        );
    }

    #[test]
    fn event_rate_idle_rooms_and_presence_debounce_are_read_and_checked() {
        let load = |pairs: &[(&str, &str)]| {
            let flags: Vec<(&str, String)> =
                pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
            Config::load(None, &flags)
        };
        let d = Config::default();
        assert_eq!(
            (d.limits.event_rate_per_sec, d.limits.event_burst),
            (20, 40)
        );
        assert_eq!(d.server.idle_room_secs, 300);
        assert_eq!(d.server.presence_debounce_ms, 1_500);
        let c = load(&[
            ("CORECAST_EVENT_RATE_PER_SEC", "0"),
            ("CORECAST_EVENT_BURST", "0"),
            ("CORECAST_IDLE_ROOM_SECS", "2"),
            ("CORECAST_PRESENCE_DEBOUNCE_MS", "0"),
        ])
        .unwrap();
        assert_eq!(c.limits.event_rate_per_sec, 0, "0 turns the limit off");
        assert_eq!(c.server.idle_room_secs, 2);
        assert_eq!(c.server.presence_debounce_ms, 0);
        for (pairs, key) in [
            (&[("CORECAST_EVENT_BURST", "0")][..], "CORECAST_EVENT_BURST"),
            (
                &[("CORECAST_IDLE_ROOM_SECS", "0")][..],
                "CORECAST_IDLE_ROOM_SECS",
            ),
            (
                &[("CORECAST_PRESENCE_DEBOUNCE_MS", "60001")][..],
                "CORECAST_PRESENCE_DEBOUNCE_MS",
            ),
        ] {
            let err = load(pairs).unwrap_err();
            assert!(format!("{err:#}").contains(key), "{err:#}");
        }
    }

    #[test]
    fn group_id_limit_is_read_and_bounded() {
        let load = |v: &str| {
            Config::load(None, &[("CORECAST_MAX_GROUP_ID_BYTES", v.into())])
                .and_then(|c| c.validate().map(|_| c))
        };
        assert_eq!(Config::default().limits.max_group_id_bytes, 128);
        assert_eq!(load("64").unwrap().limits.max_group_id_bytes, 64);
        for bad in ["0", "1025"] {
            let err = load(bad).unwrap_err();
            assert!(
                format!("{err:#}").contains("CORECAST_MAX_GROUP_ID_BYTES"),
                "{err:#}"
            );
        }
    }
}
