//! The one configuration of corecast, shared by the gateway (`corecast`) and the notifier
//! (`corecast-notifier`): a TOML file (`--config`), under `CORECAST_*` environment variables,
//! under flags. [`Config`] composes the sections: `[store]` is defined in the storage crate,
//! beside the backends it configures; the gateway's `[server]`, `[auth]` and `[limits]` and the
//! notifier's `[notifier]` are here, one module each, so that the notifier reads its
//! configuration without building the gateway.
//!
//! A key is spelled once, on its field: the field's name is its key in the file (serde) and,
//! unless its `#[arg(long = ...)]` says otherwise, its flag; its `#[arg(env = ...)]` is its
//! variable, its value parser is named beside it, and its doc comment is both the reference
//! and the `--help` text. clap puts a flag over its variable; [`Config::load`] puts both over
//! the file, and the file over [`Default`]. Which keys a command takes as flags is the binary's
//! choice ([`Flags`]); every key is read from its variable in every command. [`Config::validate`] runs once at start and names the bad key in its error.
//!
//! This crate never starts anything: it reads a file and the environment, and only the
//! binaries call [`init_logging`].

mod auth;
mod cluster;
mod limits;
mod notifier;
mod recovery;
mod server;

pub use auth::{AuthConfig, JwtAlgorithm, DEV_JWT_SECRET};
pub use cluster::ClusterConfig;
pub use corecast_storage::{StoreConfig, StoreKind};
pub use limits::LimitsConfig;
pub use notifier::{NotifierConfig, SmtpTls};
pub use recovery::RecoveryConfig;
pub use server::ServerConfig;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use serde::Deserialize;
use std::ffi::OsStr;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

/// The whole configuration: one section per part of corecast.
#[derive(Debug, Clone, Default, Deserialize, Args)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub store: StoreConfig,
    #[command(flatten)]
    pub notifier: NotifierConfig,
    #[command(flatten)]
    pub recovery: RecoveryConfig,
    #[command(flatten)]
    pub cluster: ClusterConfig,
}

/// Why the configuration cannot be used. A bad flag or variable value is refused earlier, by
/// clap, with the variable named (`corecast_config_value`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file cannot be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid TOML, or names an unknown key, or holds a bad value.
    #[error("invalid config file {}", path.display())]
    File {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// A value parses but makes no sense; the message names the key.
    #[error("{0}")]
    Invalid(String),
}

macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err(Error::Invalid(format!($($arg)*)))
    };
}

/// The keys a command takes as flags too, named by their variables (`CORECAST_LISTEN` is
/// `--listen` for the gateway); every other key is read from its variable only. A binary
/// names one set per command; docs/operations.md lists them.
pub trait Flags {
    const VARIABLES: &'static [&'static str];
}

/// The configuration's part of a command line, for a binary to `#[command(flatten)]` into its
/// arguments: `--config FILE`, every key's variable, and as flags the keys that `F` names.
pub struct Keys<F> {
    matches: ArgMatches,
    flags: PhantomData<F>,
}

impl<F> Keys<F> {
    /// The configuration these arguments give: flag over variable over file over default.
    pub fn load(&self) -> Result<Config, Error> {
        let file = self.matches.get_one::<PathBuf>(FILE).map(PathBuf::as_path);
        Config::load(file, &self.matches)
    }
}

impl<F: Flags> Args for Keys<F> {
    fn augment_args(cmd: Command) -> Command {
        add_keys(cmd, F::VARIABLES)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        add_keys(cmd, F::VARIABLES)
    }
}

impl<F> FromArgMatches for Keys<F> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Keys {
            matches: matches.clone(),
            flags: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.matches = matches.clone();
        Ok(())
    }
}

/// `T::parse()`, except that a bad value of a key exits with status 1, as every other
/// configuration error does; other command-line mistakes exit with clap's 2, help with 0.
pub fn parse<T: clap::Parser>() -> T {
    T::try_parse().unwrap_or_else(|e| {
        if e.kind() == ErrorKind::ValueValidation {
            let _ = e.print();
            std::process::exit(1);
        }
        e.exit()
    })
}

/// The id of `--config`.
const FILE: &str = "config";

/// Adds `--config` and every key of [`Config`] to `cmd`: each reads its variable, and those
/// whose variable `flags` names are flags as well. Values never appear in `--help` (secrets).
pub fn add_keys(cmd: Command, flags: &[&str]) -> Command {
    let keys = Config::augment_args_for_update(Command::new("keys"));
    let cmd = cmd
        .arg(
            Arg::new(FILE)
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML config file"),
        )
        // clap has no argument read from a variable only: one without a flag name is
        // positional. So the keys that are not flags here become hidden positionals, and this
        // one, added first, takes any positional value given and refuses it as clap refuses an
        // unexpected argument: the command line takes exactly the flags named, nothing more.
        .arg(Arg::new("stray").hide(true).value_parser(Stray));
    cmd.args(keys.get_arguments().map(|key| {
        let key = key.clone().hide_env_values(true);
        let is_flag = key
            .get_env()
            .and_then(OsStr::to_str)
            .is_some_and(|v| flags.contains(&v));
        if is_flag {
            key
        } else {
            key.long(None).hide(true)
        }
    }))
}

/// Refuses a positional argument (see [`add_keys`]).
#[derive(Clone)]
struct Stray;

impl TypedValueParser for Stray {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &Command,
        _arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        let message = format!("unexpected argument '{}' found\n", value.to_string_lossy());
        Err(clap::Error::raw(ErrorKind::UnknownArgument, message).with_cmd(cmd))
    }
}

impl Config {
    /// The file's settings (the defaults without one), with the flags and variables in
    /// `matches` over them, validated. clap has already put each flag over its variable.
    pub fn load(file: Option<&Path>, matches: &ArgMatches) -> Result<Config, Error> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                    path: path.into(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| Error::File {
                    path: path.into(),
                    source,
                })?
            }
            None => Config::default(),
        };
        config
            .update_from_arg_matches(matches)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), Error> {
        let s = &self.server;
        if !s.path.starts_with('/') {
            invalid!(
                "server.path (CORECAST_PATH) must start with '/', got {:?}",
                s.path
            );
        }
        if s.paced_room_members > 0 && !(1..=1_000).contains(&s.pacing_window_ms) {
            invalid!("server.pacing_window_ms must be between 1 and 1000 while pacing is on");
        }
        if s.ping_interval_ms == 0 || s.ping_timeout_ms == 0 {
            invalid!("server.ping_interval_ms and server.ping_timeout_ms must be above 0");
        }
        if s.transports.is_empty() {
            invalid!("server.transports (CORECAST_TRANSPORTS) must name at least one transport: polling, websocket");
        }
        if let Some(t) = s
            .transports
            .iter()
            .find(|t| *t != "polling" && *t != "websocket")
        {
            invalid!("server.transports (CORECAST_TRANSPORTS): unknown transport {t:?}; use polling, websocket or both");
        }
        if s.max_pending_connections == 0 {
            invalid!("server.max_pending_connections (CORECAST_MAX_PENDING_CONNECTIONS) must be at least 1");
        }
        if s.handshake_timeout_ms == 0 {
            invalid!(
                "server.handshake_timeout_ms (CORECAST_HANDSHAKE_TIMEOUT_MS) must be at least 1"
            );
        }
        if s.max_payload < 64 {
            invalid!("server.max_payload (CORECAST_MAX_PAYLOAD) must be at least 64 bytes");
        }
        if !(1..=256).contains(&s.admin_threads) {
            invalid!(
                "server.admin_threads (CORECAST_ADMIN_THREADS) must be between 1 and 256, got {}",
                s.admin_threads
            );
        }
        if s.admin_max_connections == 0 || s.admin_request_timeout_ms == 0 {
            invalid!(
                "server.admin_max_connections (CORECAST_ADMIN_MAX_CONNECTIONS) and \
                 server.admin_request_timeout_ms (CORECAST_ADMIN_REQUEST_TIMEOUT_MS) must be above 0"
            );
        }
        if s.shards > 256 {
            invalid!(
                "server.shards (CORECAST_SHARDS) must be at most 256, got {}",
                s.shards
            );
        }
        if s.idle_room_secs == 0 {
            invalid!("server.idle_room_secs (CORECAST_IDLE_ROOM_SECS) must be at least 1");
        }
        if s.presence_debounce_ms > 60_000 {
            invalid!(
                "server.presence_debounce_ms (CORECAST_PRESENCE_DEBOUNCE_MS) must be at most \
                 60000, got {}",
                s.presence_debounce_ms
            );
        }
        if self.limits.event_rate_per_sec > 0 && self.limits.event_burst == 0 {
            invalid!(
                "limits.event_burst (CORECAST_EVENT_BURST) must be at least 1 while \
                 limits.event_rate_per_sec (CORECAST_EVENT_RATE_PER_SEC) is on"
            );
        }
        if self.auth.jwt_algorithm != JwtAlgorithm::HS256 && self.auth.jwt_public_key_file.is_none()
        {
            invalid!(
                "auth.jwt_algorithm {:?} needs auth.jwt_public_key_file (CORECAST_JWT_PUBLIC_KEY_FILE)",
                self.auth.jwt_algorithm
            );
        }
        let limit = corecast_storage::GroupId::LIMIT_BYTES;
        if !(1..=limit).contains(&self.limits.max_group_id_bytes) {
            invalid!(
                "limits.max_group_id_bytes (CORECAST_MAX_GROUP_ID_BYTES) must be between 1 and \
                 {limit}, got {}",
                self.limits.max_group_id_bytes
            );
        }
        self.store.validate().map_err(Error::Invalid)?;
        self.cluster.validate().map_err(Error::Invalid)?;
        if self.cluster.enabled() && self.store.kind != StoreKind::Scylla {
            invalid!(
                "cluster mode (CORECAST_CLUSTER) needs the shared store: set store.kind \
                 (CORECAST_STORE) to scylla; the embedded store is one node's own"
            );
        }
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

    /// Every key's variable.
    fn variables() -> Vec<String> {
        Config::augment_args_for_update(Command::new("keys"))
            .get_arguments()
            .filter_map(|a| a.get_env()?.to_str().map(String::from))
            .collect()
    }

    /// Loads `file` with `args` on a command that takes every key as a flag (but the
    /// notifier's `--listen`, which is the gateway's too); the error with its causes.
    fn load(file: Option<&Path>, args: &[&str]) -> Result<Config, String> {
        let all = variables();
        let flags: Vec<&str> = all
            .iter()
            .map(String::as_str)
            .filter(|v| *v != "CORECAST_NOTIFIER_LISTEN")
            .collect();
        let matches = add_keys(Command::new("test"), &flags)
            .try_get_matches_from(std::iter::once("test").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::load(file, &matches).map_err(|e| {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text += &format!(": {c}");
                cause = c.source();
            }
            text
        })
    }

    #[test]
    fn every_key_has_its_own_variable_and_parses_into_its_field() {
        let all = variables();
        assert_eq!(all.len(), 68, "{all:?}");
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "a variable names two keys");
        assert!(all.iter().all(|v| v.starts_with("CORECAST_")));
        // One value of the right kind for each key, whatever its type: a parser whose value
        // is not its field's type panics here (clap checks the type on access).
        for var in &all {
            let flag = format!("--{}", key_flag(var));
            let matches = ["1", "true", "127.0.0.1:1", "embedded", "HS256", "none"]
                .into_iter()
                .find_map(|v| {
                    add_keys(Command::new("t"), &[var])
                        .try_get_matches_from(["t", &flag, v])
                        .ok()
                })
                .unwrap_or_else(|| panic!("no sample value parses for {var}"));
            let mut c = Config::default();
            c.update_from_arg_matches(&matches).unwrap();
        }
    }

    /// The flag of the key read from `var`.
    fn key_flag(var: &str) -> String {
        add_keys(Command::new("t"), &[var])
            .get_arguments()
            .find(|a| a.get_env().and_then(OsStr::to_str) == Some(var))
            .and_then(Arg::get_long)
            .expect("every key has a flag name")
            .to_string()
    }

    #[test]
    fn a_dead_node_time_outside_2_to_3600_seconds_is_refused_with_its_key() {
        assert_eq!(Config::default().cluster.dead_after_secs, 30);
        for bad in ["1", "3601"] {
            let err = load(None, &["--dead-after-secs", bad]).unwrap_err();
            assert!(err.contains("CORECAST_CLUSTER_DEAD_AFTER_SECS"), "{err}");
        }
        let c = load(None, &["--dead-after-secs", "5"]).unwrap();
        assert_eq!(c.cluster.dead_after_secs, 5);
    }

    #[test]
    fn the_advertised_address_defaults_to_a_listen_address_others_can_reach() {
        let listen: std::net::SocketAddr = "10.0.0.7:3000".parse().unwrap();
        let c = Config::default().cluster;
        assert_eq!(c.advertised(listen), Ok(listen));
        let err = c.advertised("0.0.0.0:3000".parse().unwrap()).unwrap_err();
        assert!(err.contains("CORECAST_CLUSTER_ADVERTISE"), "{err}");
        let c = load(None, &["--cluster-advertise", "10.0.0.8:3000"]).unwrap();
        assert_eq!(
            c.cluster.advertised("0.0.0.0:3000".parse().unwrap()),
            Ok("10.0.0.8:3000".parse().unwrap())
        );
        let c = load(None, &["--cluster-advertise", "0.0.0.0:3000"]).unwrap();
        assert!(c.cluster.advertised(listen).is_err());
    }

    #[test]
    fn file_then_flags_with_the_key_named_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nshards = 3\n[limits]\nrate_limit_per_min = 5\n",
        )
        .unwrap();
        let c = load(Some(&path), &["--shards", "2"]).unwrap();
        assert_eq!(c.server.shards, 2);
        assert_eq!(c.limits.rate_limit_per_min, 5);
        let err = load(Some(&path), &["--shards", "two"]).unwrap_err();
        assert!(err.contains("CORECAST_SHARDS"), "{err}");
        std::fs::write(&path, "[server]\nshardz = 3\n").unwrap();
        let err = load(Some(&path), &[]).unwrap_err();
        assert!(err.contains("shardz"), "{err}");
    }

    #[test]
    fn values_are_read_as_before_blanks_lists_and_empty_optionals() {
        let c = load(
            None,
            &[
                "--shards",
                " 2 ",
                "--transports",
                " websocket, ,",
                "--allowed-origins",
                "",
                "--jwt-secret",
                "",
                "--store",
                "scylla",
                "--scylla-nodes",
                "a:1, b:2",
                "--path",
                "/x/",
                "--demo",
                "false",
                "--jwt-algorithm",
                "HS256",
                "--smtp-tls",
                "starttls",
            ],
        )
        .unwrap();
        assert_eq!(c.server.shards, 2);
        assert_eq!(c.server.transports, ["websocket"]);
        assert!(c.server.allowed_origins.is_empty());
        assert_eq!(c.auth.jwt_secret, None, "empty unsets");
        assert_eq!(c.store.kind, StoreKind::Scylla);
        assert_eq!(c.store.scylla_nodes, ["a:1", "b:2"]);
        assert_eq!(c.server.path, "/x/");
        assert!(!c.server.demo);
        assert_eq!(c.notifier.smtp_tls, SmtpTls::Starttls);
        for (flag, bad, var) in [
            ("--store", "sqlite", "CORECAST_STORE"),
            ("--demo", "yes", "CORECAST_DEMO"),
            ("--listen", "localhost", "CORECAST_LISTEN"),
        ] {
            let err = load(None, &[flag, bad]).unwrap_err();
            assert!(err.contains(var) && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn only_the_named_keys_are_flags_and_nothing_else_is_taken() {
        let cmd = || add_keys(Command::new("t"), &["CORECAST_SHARDS"]);
        let m = cmd().try_get_matches_from(["t", "--shards", "2"]).unwrap();
        assert_eq!(Config::load(None, &m).unwrap().server.shards, 2);
        let err = cmd()
            .try_get_matches_from(["t", "--admin-threads", "2"])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownArgument, "{err}");
        let err = cmd().try_get_matches_from(["t", "/x/"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownArgument, "{err}");
        assert!(
            err.to_string().contains("unexpected argument '/x/'"),
            "{err}"
        );
        let help = cmd().render_help().to_string();
        assert!(
            help.contains("--shards") && help.contains("--config"),
            "{help}"
        );
        assert!(!help.contains("admin-threads"), "{help}");
    }

    #[test]
    fn pacing_window_out_of_range_is_refused_unless_pacing_is_off() {
        let load = |members: &str, window: &str| {
            load(
                None,
                &[
                    "--paced-room-members",
                    members,
                    "--pacing-window-ms",
                    window,
                ],
            )
        };
        for window in ["0", "1001"] {
            let err = load("1000", window).unwrap_err();
            assert!(err.contains("pacing_window_ms"), "{err}");
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
        let d = Config::default();
        assert_eq!(
            (d.limits.event_rate_per_sec, d.limits.event_burst),
            (20, 40)
        );
        assert_eq!(d.server.idle_room_secs, 300);
        assert_eq!(d.server.presence_debounce_ms, 1_500);
        let c = load(
            None,
            &[
                "--event-rate-per-sec",
                "0",
                "--event-burst",
                "0",
                "--idle-room-secs",
                "2",
                "--presence-debounce-ms",
                "0",
            ],
        )
        .unwrap();
        assert_eq!(c.limits.event_rate_per_sec, 0, "0 turns the limit off");
        assert_eq!(c.server.idle_room_secs, 2);
        assert_eq!(c.server.presence_debounce_ms, 0);
        for (args, key) in [
            (["--event-burst", "0"], "CORECAST_EVENT_BURST"),
            (["--idle-room-secs", "0"], "CORECAST_IDLE_ROOM_SECS"),
            (
                ["--presence-debounce-ms", "60001"],
                "CORECAST_PRESENCE_DEBOUNCE_MS",
            ),
        ] {
            let err = load(None, &args).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn group_id_limit_is_read_and_bounded() {
        let load = |v: &str| load(None, &["--max-group-id-bytes", v]);
        assert_eq!(Config::default().limits.max_group_id_bytes, 128);
        assert_eq!(load("64").unwrap().limits.max_group_id_bytes, 64);
        for bad in ["0", "1025"] {
            let err = load(bad).unwrap_err();
            assert!(err.contains("CORECAST_MAX_GROUP_ID_BYTES"), "{err}");
        }
    }

    #[test]
    fn commit_budget_is_read_and_bounded() {
        let load = |v: &str| load(None, &["--commit-budget-us", v]);
        assert_eq!(Config::default().store.commit_budget_us, 800);
        let budget = |c: Config| match c.store.backend() {
            corecast_storage::Backend::Embedded { commit_budget, .. } => commit_budget,
            other => panic!("{other:?}"),
        };
        assert_eq!(budget(load("0").unwrap()), std::time::Duration::ZERO);
        assert_eq!(
            budget(load("2500").unwrap()),
            std::time::Duration::from_micros(2500)
        );
        let err = load("100001").unwrap_err();
        assert!(err.contains("CORECAST_COMMIT_BUDGET_US"), "{err}");
    }

    #[test]
    fn cluster_mode_needs_the_shared_store_a_redis_url_and_a_plain_node_id() {
        assert!(!Config::default().cluster.enabled(), "one node by default");
        let redis = ["--cluster", "redis://127.0.0.1:6379"];
        let err = load(None, &redis).unwrap_err();
        assert!(
            err.contains("CORECAST_STORE") && err.contains("scylla"),
            "{err}"
        );
        let scylla = ["--store", "scylla"];
        let c = load(
            None,
            &[&redis[..], &scylla[..], &["--node-id", "gw-1.a_b"]].concat(),
        )
        .unwrap();
        assert!(c.cluster.enabled());
        assert_eq!(c.cluster.url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(c.cluster.node_id.as_deref(), Some("gw-1.a_b"));
        let err = load(
            None,
            &[&["--cluster", "127.0.0.1:6379"][..], &scylla[..]].concat(),
        )
        .unwrap_err();
        assert!(err.contains("CORECAST_CLUSTER"), "{err}");
        for bad in ["a b", "x:y", &"n".repeat(65)] {
            let err = load(
                None,
                &[&redis[..], &scylla[..], &["--node-id", bad]].concat(),
            )
            .unwrap_err();
            assert!(err.contains("CORECAST_NODE_ID"), "{bad}: {err}");
        }
    }
}
