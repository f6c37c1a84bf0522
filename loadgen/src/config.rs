//! The load generator's options: command-line flags, optionally preceded by a TOML file
//! whose keys are the flag names (`conns = 1000`, `group-size = 10`, ...). Flags given on
//! the command line win over the file. Validated once into [`Config`] before anything
//! connects.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

/// What the run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Hold `--conns` authenticated connections without traffic; reports server RSS per
    /// connection (give `--server-pid`).
    Idle,
    /// Groups of `--group-size` members, open-loop sends at `--rate` messages/s in total.
    Fanout,
    /// One room holding every connection; `--rate` messages/s into it.
    LargeRoom,
    /// Everyone connects at once (no connect rate limit), then everyone drops and
    /// reconnects at once; reports connects/s and handshake latency of both rounds.
    ConnectStorm,
    /// Connection state recovery at scale: every client but one sender per group drops at
    /// once, `--missed` messages go into each group meanwhile, then every client reconnects at
    /// once with its pid and offset; live traffic at `--rate` continues throughout. Reports
    /// recovered vs fresh sessions, missed messages lost or duplicated, the time until every
    /// client has all it missed, and live latency during the storm.
    RecoveryStorm,
}

/// How each session reaches the server (Engine.IO's two transports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// One WebSocket per session (`transport=websocket`, no polling first).
    Websocket,
    /// HTTP long-polling only, never upgraded: two keep-alive connections per session, as a
    /// browser holds them (one for the long-poll GET, one for the POSTs).
    Polling,
}

impl Transport {
    /// TCP connections (open files) one session holds at most.
    pub fn sockets_per_session(self) -> u32 {
        match self {
            Transport::Websocket => 1,
            Transport::Polling => 2,
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "corecast-loadgen",
    version,
    about = "Socket.IO load generator: open-loop sends, end-to-end latency, delivery accounting",
    args_override_self = true
)]
pub struct Args {
    /// TOML file with defaults for any flag below (keys are flag names without `--`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "fanout")]
    pub scenario: Scenario,
    /// Engine.IO transport of every session.
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: Transport,
    /// Public Socket.IO address of the server, or of several nodes, comma-separated: user `i`
    /// connects to the `(i mod n)`th, so the members of a group spread over the nodes. The
    /// admin API set-up and the `/metrics` reads go to `--admin` only.
    #[arg(long, default_value = "127.0.0.1:3000", value_delimiter = ',')]
    pub target: Vec<SocketAddr>,
    /// Engine.IO path.
    #[arg(long, default_value = "/socket.io/")]
    pub path: String,
    /// Internal (admin API) address, used to set up users and groups.
    #[arg(long, default_value = "127.0.0.1:3001")]
    pub admin: SocketAddr,
    #[arg(long, env = "CORECAST_ADMIN_TOKEN", default_value = "dev-admin")]
    pub admin_token: String,
    /// HS256 secret the server verifies tokens with; the loadgen mints its own tokens.
    #[arg(long, env = "CORECAST_JWT_SECRET", default_value = "dev-secret")]
    pub jwt_secret: String,
    /// Skip the admin API set-up (users and groups already exist).
    #[arg(long)]
    pub no_setup: bool,
    /// Do not PUT each user before the groups (only groups are set up).
    #[arg(long)]
    pub no_users: bool,
    /// Total connections (one user each), across every process.
    #[arg(long, default_value_t = 1000)]
    pub conns: u32,
    /// Members per group (large-room: defaults to every connection).
    #[arg(long)]
    pub group_size: Option<u32>,
    /// Number of groups (default: conns / group-size). Users beyond groups*size join none.
    #[arg(long)]
    pub groups: Option<u32>,
    /// Members per group who never connect (users created with an email address after the
    /// connecting ones): every message then leaves that many notices for the notifier.
    #[arg(long, default_value_t = 0)]
    pub offline_members: u32,
    /// First user id; user i is `user-base + i`.
    #[arg(long, default_value_t = 1)]
    pub user_base: u64,
    /// First group id; group g is `<group-prefix><group-base + g>`, sent as a JSON string
    /// (group ids are strings, as the Node.js app's room names are).
    #[arg(long, default_value_t = 1)]
    pub group_base: u64,
    /// Text before each group's number, e.g. `team-` or a 20-character stand-in for the Node.js
    /// app's 24-character ObjectId strings: letters, digits and `-._~` only (no URL encoding).
    #[arg(long, default_value = "")]
    pub group_prefix: String,
    /// Total messages per second (open loop), spread evenly over the groups.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Bytes of message text (at least the ~40-byte header the loadgen writes into it).
    #[arg(long, default_value_t = 64)]
    pub msg_size: usize,
    /// Seconds of measured sending (idle: seconds to hold).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of sending before measuring starts (deliveries still accounted).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds to wait for in-flight deliveries after the last send.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// New connections per second in total; 0 means as fast as possible.
    #[arg(long, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// Handshakes in flight per thread at most.
    #[arg(long, default_value_t = 512)]
    pub max_inflight: usize,
    /// Give up on connections not ready after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub connect_timeout: f64,
    /// Source addresses 127.0.0.1 .. 127.0.0.N, to go past one address's ephemeral ports.
    #[arg(long, default_value_t = 4)]
    pub src_addrs: u8,
    /// Event-loop threads (default: online cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Loadgen processes (each holds at most ~19,000 sockets under a 20,000 file limit).
    #[arg(long, default_value_t = 1)]
    pub procs: u32,
    /// Internal: this process is child `proc-index` of `procs` (set by the parent).
    #[arg(long, hide = true, default_value_t = 0)]
    pub proc_index: u32,
    /// recovery-storm: messages sent into each group while its clients are away.
    #[arg(long, default_value_t = 20)]
    pub missed: u32,
    /// Ask for an ack on every send (counts ack errors, measures ack latency).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ack: bool,
    /// Sleep this many microseconds after each event-loop batch, trading added latency
    /// (at most this much) for fewer wake-ups per delivery. 0 (default): no coalescing.
    #[arg(long, default_value_t = 0)]
    pub coalesce_us: u64,
    /// The server's PID: its RSS and CPU time are sampled.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// A name for this run in reports (e.g. "corecast" or "baseline").
    #[arg(long, default_value = "run")]
    pub label: String,
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    /// Flags from the command line, with a `--config` TOML file's keys spliced in front so
    /// that the command line overrides them.
    pub fn load() -> anyhow::Result<Args> {
        let argv: Vec<String> = std::env::args().collect();
        let first = Args::parse_from(&argv);
        let Some(path) = &first.config else {
            return Ok(first);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario file {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let mut merged = vec![argv[0].clone()];
        for (key, value) in table {
            let v = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(true) if key != "ack" => {
                    merged.push(format!("--{key}"));
                    continue;
                }
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!("{}: key {key}: unsupported value {other}", path.display()),
            };
            merged.push(format!("--{key}"));
            merged.push(v);
        }
        merged.extend(argv[1..].iter().cloned());
        Args::try_parse_from(&merged).with_context(|| format!("flags from {}", path.display()))
    }
}

/// Validated options.
#[derive(Debug, Clone)]
pub struct Config {
    pub args: Args,
    pub group_size: u32,
    pub nr_groups: u32,
    pub nr_threads: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub drain: Duration,
    pub connect_timeout: Duration,
    pub src_addrs: Vec<Ipv4Addr>,
}

/// Text header `cc:<group>:<seq>:<intended send ns>:<sender>:` plus padding (a longer
/// header is sent unpadded).
pub const MIN_MSG_SIZE: usize = 48;

impl Config {
    pub fn from_args(mut args: Args) -> anyhow::Result<Config> {
        if args.conns == 0 {
            bail!("--conns must be at least 1");
        }
        if args.procs == 0 || args.proc_index >= args.procs {
            bail!("--procs must be at least 1 (and --proc-index below it)");
        }
        let per_proc = args.conns.div_ceil(args.procs);
        let max_per_proc = 19_000 / args.transport.sockets_per_session();
        if per_proc > max_per_proc {
            bail!(
                "{per_proc} connections per process exceed what a 20,000 open-file limit allows; \
                 use --procs {}",
                args.conns.div_ceil(max_per_proc)
            );
        }
        if matches!(
            args.scenario,
            Scenario::ConnectStorm | Scenario::RecoveryStorm
        ) {
            args.connect_rate = 0.0;
        }
        if args.scenario == Scenario::RecoveryStorm {
            // Its phases (drop, missed sends, reconnect) are driven by one process's main
            // thread; 10,000 clients fit in one process.
            if args.procs != 1 {
                bail!("--scenario recovery-storm runs in one process (--procs 1)");
            }
            if args.missed == 0 || args.missed > 100_000 {
                bail!("--missed must be 1 to 100,000");
            }
        }
        let group_size = match (args.scenario, args.group_size) {
            (_, Some(k)) => k,
            (Scenario::LargeRoom, None) => args.conns,
            _ => 10,
        }
        .clamp(1, args.conns);
        let nr_groups = match (args.scenario, args.groups) {
            (_, Some(g)) => g,
            (Scenario::LargeRoom, None) => 1,
            _ => args.conns / group_size,
        };
        if args.scenario == Scenario::RecoveryStorm && (group_size < 2 || nr_groups == 0) {
            bail!("--scenario recovery-storm needs groups of at least 2 (a sender and a client)");
        }
        if u64::from(nr_groups) * u64::from(group_size) > u64::from(args.conns) {
            bail!("--groups {nr_groups} of --group-size {group_size} need more than --conns");
        }
        let p = &args.group_prefix;
        if p.len() > 100
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            bail!("--group-prefix must be at most 100 letters, digits or -._~, got {p:?}");
        }
        if args.msg_size < MIN_MSG_SIZE {
            args.msg_size = MIN_MSG_SIZE;
        }
        if args.rate.is_nan()
            || args.rate < 0.0
            || args.connect_rate.is_nan()
            || args.connect_rate < 0.0
        {
            bail!("--rate and --connect-rate must be non-negative");
        }
        let nr_threads = args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let src_addrs = (1..=args.src_addrs.max(1))
            .map(|i| Ipv4Addr::new(127, 0, 0, i))
            .collect();
        let secs = |s: f64, key: &str| -> anyhow::Result<Duration> {
            Duration::try_from_secs_f64(s).with_context(|| format!("--{key} must be seconds"))
        };
        Ok(Config {
            group_size,
            nr_groups,
            nr_threads,
            duration: secs(args.duration, "duration")?,
            warmup: secs(args.warmup, "warmup")?,
            drain: secs(args.drain, "drain")?,
            connect_timeout: secs(args.connect_timeout, "connect-timeout")?,
            src_addrs,
            args,
        })
    }

    /// Whether this scenario sends messages.
    pub fn sends(&self) -> bool {
        matches!(
            self.args.scenario,
            Scenario::Fanout | Scenario::LargeRoom | Scenario::RecoveryStorm
        ) && self.args.rate > 0.0
    }

    /// Whether this run is a recovery storm (one sender per group stays connected).
    pub fn storm(&self) -> bool {
        self.args.scenario == Scenario::RecoveryStorm
    }

    /// Global user index `i` (0-based) lives in process `i % procs`, and there in thread
    /// `(i / procs) % threads`. Group `g` holds users `g*k .. (g+1)*k`.
    pub fn proc_of(&self, user_idx: u32) -> u32 {
        user_idx % self.args.procs
    }

    /// Which of the `--target` addresses user `user_idx` connects to.
    pub fn target_of(&self, user_idx: u32) -> usize {
        user_idx as usize % self.args.target.len()
    }

    pub fn thread_of(&self, user_idx: u32) -> usize {
        (user_idx / self.args.procs) as usize % self.nr_threads
    }

    pub fn group_of(&self, user_idx: u32) -> Option<u32> {
        let g = user_idx / self.group_size;
        (g < self.nr_groups).then_some(g)
    }

    pub fn user_id(&self, user_idx: u32) -> u64 {
        self.args.user_base + u64::from(user_idx)
    }

    /// The `k`th offline member of group `g`: numbered after every connecting user.
    pub fn offline_user_id(&self, g: u32, k: u32) -> u64 {
        self.args.user_base
            + u64::from(self.args.conns)
            + u64::from(g) * u64::from(self.args.offline_members)
            + u64::from(k)
    }

    /// Group `g`'s id, as sent and as the admin API's path segment (no character in it needs
    /// encoding).
    pub fn group_id(&self, g: u32) -> String {
        format!(
            "{}{}",
            self.args.group_prefix,
            self.args.group_base + u64::from(g)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--target a,b,c` spreads the users over the nodes in turn, so a group's members are on
    /// different nodes; one address is the default.
    #[test]
    fn users_spread_over_the_targets_in_turn() {
        let cfg = |flags: &[&str]| {
            let args = Args::try_parse_from([&["corecast-loadgen"], flags].concat()).unwrap();
            Config::from_args(args).unwrap()
        };
        let one = cfg(&[]);
        assert_eq!(one.args.target, vec!["127.0.0.1:3000".parse().unwrap()]);
        assert!((0..10).all(|u| one.target_of(u) == 0));
        let three = cfg(&["--target", "127.0.0.1:3000,127.0.0.1:3010,127.0.0.1:3020"]);
        assert_eq!(three.args.target.len(), 3);
        let nodes: Vec<usize> = (0..10).map(|u| three.target_of(u)).collect();
        assert_eq!(nodes, vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
        assert!(Args::try_parse_from(["corecast-loadgen", "--target", "nowhere"]).is_err());
    }
}
