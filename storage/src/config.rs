//! The `[store]` section of corecast's configuration: which backend holds the data, and its
//! settings. It lives here, beside the backends it configures; the `corecast-config` crate
//! composes it with the other sections, and layers its flags and `CORECAST_*` variables over the
//! file. Plain data: nothing here opens anything.

use corecast_config_value::{choice, list, optional, parse, path};
use serde::Deserialize;
use std::path::PathBuf;

/// Which backend holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Embedded,
    Scylla,
}

/// The `[store]` section. Each key's variable is in its `#[arg]`; the flags a binary takes are
/// its choice (`corecast_config::Flags`).
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `embedded` or `scylla`.
    #[arg(long = "store", value_name = "STORE", env = "CORECAST_STORE", value_parser = choice::<StoreKind>())]
    pub kind: StoreKind,
    /// Folder of the embedded store.
    #[arg(long, env = "CORECAST_DATA_DIR", value_parser = path())]
    pub data_dir: PathBuf,
    /// Embedded store: how long a write may wait on average, its commit included, so that one
    /// commit (one fsync) carries the writes that come soon after it, in microseconds (0 =
    /// commit whenever the queue is empty; see `embedded::Options::commit_budget`).
    #[arg(long, env = "CORECAST_COMMIT_BUDGET_US", value_parser = parse::<u64>())]
    pub commit_budget_us: u64,
    /// ScyllaDB contact points, `host:port`, comma-separated.
    #[arg(long, env = "CORECAST_SCYLLA_NODES", value_parser = list())]
    pub scylla_nodes: std::vec::Vec<String>,
    /// Keyspace.
    #[arg(long, env = "CORECAST_SCYLLA_KEYSPACE")]
    pub scylla_keyspace: String,
    /// Replication, as CQL's replication map without braces, e.g.
    /// `'class': 'SimpleStrategy', 'replication_factor': 1` or
    /// `'class': 'NetworkTopologyStrategy', 'dc1': 3`.
    #[arg(long, env = "CORECAST_SCYLLA_REPLICATION")]
    pub scylla_replication: String,
    /// Consistency of reads and writes, e.g. `LOCAL_QUORUM`, `ONE`, `QUORUM`.
    #[arg(long, env = "CORECAST_SCYLLA_CONSISTENCY")]
    pub scylla_consistency: String,
    /// Local datacenter for token-aware, DC-aware routing.
    #[arg(long, env = "CORECAST_SCYLLA_LOCAL_DC", value_parser = optional::<String>())]
    pub scylla_local_dc: std::option::Option<String>,
    /// Create the keyspace and tables at start.
    #[arg(long, env = "CORECAST_SCYLLA_MIGRATE", action = clap::ArgAction::Set, value_parser = parse::<bool>())]
    pub migrate_on_start: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Embedded,
            data_dir: PathBuf::from("corecast-data"),
            commit_budget_us: crate::embedded::Options::default()
                .commit_budget
                .as_micros() as u64,
            scylla_nodes: vec!["127.0.0.1:9042".into()],
            scylla_keyspace: "corecast".into(),
            scylla_replication: "'class': 'SimpleStrategy', 'replication_factor': 1".into(),
            scylla_consistency: "LOCAL_QUORUM".into(),
            scylla_local_dc: None,
            migrate_on_start: true,
        }
    }
}

impl StoreConfig {
    /// The backend to open ([`crate::open`]) or migrate ([`crate::migrate`]).
    pub fn backend(&self) -> crate::Backend {
        match self.kind {
            StoreKind::Embedded => crate::Backend::Embedded {
                data_dir: self.data_dir.clone(),
                commit_budget: std::time::Duration::from_micros(self.commit_budget_us),
            },
            StoreKind::Scylla => crate::Backend::Scylla {
                nodes: self.scylla_nodes.clone(),
                keyspace: self.scylla_keyspace.clone(),
                replication: self.scylla_replication.clone(),
                consistency: self.scylla_consistency.clone(),
                local_dc: self.scylla_local_dc.clone(),
                migrate: self.migrate_on_start,
            },
        }
    }

    /// Checks what parses but makes no sense; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.kind == StoreKind::Scylla && self.scylla_nodes.is_empty() {
            return Err(
                "store.scylla_nodes (CORECAST_SCYLLA_NODES) is empty but store.kind is scylla"
                    .into(),
            );
        }
        if self.commit_budget_us > MAX_COMMIT_BUDGET_US {
            return Err(format!(
                "store.commit_budget_us (CORECAST_COMMIT_BUDGET_US) is {}; at most {MAX_COMMIT_BUDGET_US} (100 ms)",
                self.commit_budget_us
            ));
        }
        Ok(())
    }
}

/// Longest commit budget accepted: past this a write waits longer than any client expects.
const MAX_COMMIT_BUDGET_US: u64 = 100_000;
