//! The `[server]` section: the gateway's listeners, shards, Engine.IO transport, connection
//! limits, pacing and timers.

use clap::ArgAction;
use corecast_config_value::{list, parse};
use serde::Deserialize;
use std::net::SocketAddr;

/// The `[server]` section.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public Socket.IO listener.
    #[arg(long, env = "CORECAST_LISTEN", value_parser = parse::<SocketAddr>())]
    pub listen: SocketAddr,
    /// Internal admin/metrics/health listener.
    #[arg(long, env = "CORECAST_INTERNAL_LISTEN", value_parser = parse::<SocketAddr>())]
    pub internal_listen: SocketAddr,
    /// Threads answering internal requests; more complete requests wait in a queue of 32,
    /// beyond which they get 503.
    #[arg(long, env = "CORECAST_ADMIN_THREADS", value_parser = parse::<usize>())]
    pub admin_threads: usize,
    /// Internal connections being read at once; one more is answered 503 and closed.
    #[arg(long, env = "CORECAST_ADMIN_MAX_CONNECTIONS", value_parser = parse::<usize>())]
    pub admin_max_connections: usize,
    /// Time from accept for a whole internal request to arrive, then answered 408; also how
    /// long an answer may take to be read.
    #[arg(long, env = "CORECAST_ADMIN_REQUEST_TIMEOUT_MS", value_parser = parse::<u64>())]
    pub admin_request_timeout_ms: u64,
    /// Number of shards; 0 means one per online core.
    #[arg(long, env = "CORECAST_SHARDS", value_parser = parse::<usize>())]
    pub shards: usize,
    /// The Engine.IO path.
    #[arg(long, env = "CORECAST_PATH")]
    pub path: String,
    /// Origins allowed to connect, on both transports; empty allows any
    /// (comma-separated). A request without an `Origin` header
    /// (native, mobile and server clients) is not cross-origin and always accepted.
    #[arg(long, env = "CORECAST_ALLOWED_ORIGINS", value_parser = list())]
    pub allowed_origins: std::vec::Vec<String>,
    /// The Engine.IO transports served: `polling`, `websocket` or both
    /// (default both, as the official server).
    #[arg(long, env = "CORECAST_TRANSPORTS", value_parser = list())]
    pub transports: std::vec::Vec<String>,
    /// How long an upgrade probe may take from the WebSocket request to the client's upgrade
    /// packet (the reference server's `upgradeTimeout`).
    #[arg(long, env = "CORECAST_UPGRADE_TIMEOUT_MS", value_parser = parse::<u64>())]
    pub upgrade_timeout_ms: u64,
    /// How long a TCP connection may take to send a complete HTTP request head, the first one
    /// and each one after on a kept-alive connection.
    #[arg(long, env = "CORECAST_HANDSHAKE_TIMEOUT_MS", value_parser = parse::<u64>())]
    pub handshake_timeout_ms: u64,
    /// Connections that have not logged in yet (waiting for a request head or for CONNECT),
    /// at most, over all shards; at the cap a new one evicts the oldest
    /// (see gateway/src/admission.rs).
    #[arg(long, env = "CORECAST_MAX_PENDING_CONNECTIONS", value_parser = parse::<usize>())]
    pub max_pending_connections: usize,
    /// Of those, at most this many from one client IP; more are refused with 503
    /// (0 = no per-address cap, e.g. behind a proxy that
    /// hides client addresses).
    #[arg(long, env = "CORECAST_MAX_PENDING_PER_IP", value_parser = parse::<u32>())]
    pub max_pending_per_ip: u32,
    /// Accepted TCP connections per second at most, over all shards; more wait in the kernel's
    /// backlog (0 = no limit).
    #[arg(long, env = "CORECAST_ACCEPT_RATE", value_parser = parse::<u32>())]
    pub accept_rate: u32,
    /// On SIGTERM (or `POST /api/drain`), connections close spread over this many seconds, so
    /// their clients reconnect spread out (0 closes all at once).
    #[arg(long, env = "CORECAST_DRAIN_SECS", value_parser = parse::<u64>())]
    pub drain_secs: u64,
    /// How often the server pings each client.
    #[arg(long, env = "CORECAST_PING_INTERVAL_MS", value_parser = parse::<u64>())]
    pub ping_interval_ms: u64,
    /// How long a client has to answer a ping.
    #[arg(long, env = "CORECAST_PING_TIMEOUT_MS", value_parser = parse::<u64>())]
    pub ping_timeout_ms: u64,
    /// How long a new WebSocket may stay without a Socket.IO CONNECT.
    #[arg(long, env = "CORECAST_CONNECT_TIMEOUT_MS", value_parser = parse::<u64>())]
    pub connect_timeout_ms: u64,
    /// Largest incoming message in bytes, announced as `maxPayload`.
    #[arg(long, env = "CORECAST_MAX_PAYLOAD", value_parser = parse::<usize>())]
    pub max_payload: usize,
    /// Bytes queued for one client before it is disconnected as too slow.
    #[arg(long, env = "CORECAST_OUTBOUND_QUEUE_BYTES", value_parser = parse::<usize>())]
    pub outbound_queue_bytes: usize,
    /// Rooms with at least this many members connected to one shard are paced: their frames
    /// gather for `pacing_window_ms` and go out several per send (0 turns
    /// pacing off).
    #[arg(long, env = "CORECAST_PACED_ROOM_MEMBERS", value_parser = parse::<usize>())]
    pub paced_room_members: usize,
    /// How long a paced room's frames gather.
    #[arg(long, env = "CORECAST_PACING_WINDOW_MS", value_parser = parse::<u64>())]
    pub pacing_window_ms: u64,
    /// Each shard hands its batch of sends to the kernel in one io_uring submission. `false` sends the same batch with one `send(2)` per connection,
    /// for a kernel or sandbox where io_uring sends misbehave; it costs about 1 µs of CPU more
    /// per send (docs/benchmarks.md). Without io_uring for sends, that is what happens anyway.
    #[arg(long, env = "CORECAST_SEND_RING", action = ArgAction::Set, value_parser = parse::<bool>())]
    pub send_ring: bool,
    /// Serve the demo chat page at `/demo/` on the internal listener.
    #[arg(long, env = "CORECAST_DEMO", action = ArgAction::Set, value_parser = parse::<bool>())]
    pub demo: bool,
    /// A room (a group's members and subscriber counts, on its owner shard) with no
    /// subscriber and nothing in flight is forgotten after this many seconds idle, and loaded
    /// from the store again when next used (at least 1).
    #[arg(long, env = "CORECAST_IDLE_ROOM_SECS", value_parser = parse::<u64>())]
    pub idle_room_secs: u64,
    /// A user's last connection closing is announced (`userOnline` false, and the stored
    /// presence) only once they have stayed away this long; coming back sooner announces
    /// nothing (0 announces at once; at most 60000).
    #[arg(long, env = "CORECAST_PRESENCE_DEBOUNCE_MS", value_parser = parse::<u64>())]
    pub presence_debounce_ms: u64,
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
