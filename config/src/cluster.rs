//! The `[cluster]` section: several gateway nodes as one, over a Redis bus
//! (docs/operations.md, "Several nodes").

use corecast_config_value::{optional, parse};
use serde::Deserialize;

/// The `[cluster]` section. Unset `url`: one node, and nothing of the cluster runs.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The cluster bus, `redis://host:port` (Redis 7 or Valkey): cluster mode, with the
    /// shared ScyllaDB store (`CORECAST_STORE=scylla`). Unset: one node on its own.
    #[arg(long = "cluster", env = "CORECAST_CLUSTER", value_parser = optional::<String>())]
    pub url: std::option::Option<String>,
    /// This node's name in the cluster (letters, digits, `.`, `_`, `-`; at most 64). Unset:
    /// a random one per start.
    #[arg(long, env = "CORECAST_NODE_ID", value_parser = optional::<String>())]
    pub node_id: std::option::Option<String>,
    /// A node that stopped refreshing its registration this long ago is gone: its users go
    /// offline on every node (2 to 3600 seconds).
    #[arg(long, env = "CORECAST_CLUSTER_DEAD_AFTER_SECS", value_parser = parse::<u64>())]
    pub dead_after_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            url: None,
            node_id: None,
            dead_after_secs: 30,
        }
    }
}

impl ClusterConfig {
    /// Whether the node runs as part of a cluster.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// Checks the section; the error names the bad key.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(format!(
                    "cluster.url (CORECAST_CLUSTER) must be redis://host:port, got {url:?}"
                ));
            }
        }
        if !(2..=3600).contains(&self.dead_after_secs) {
            return Err(format!(
                "cluster.dead_after_secs (CORECAST_CLUSTER_DEAD_AFTER_SECS) must be 2 to 3600, \
                 got {}",
                self.dead_after_secs
            ));
        }
        if let Some(id) = &self.node_id {
            let ok = (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                return Err(format!(
                    "cluster.node_id (CORECAST_NODE_ID) must be 1 to 64 letters, digits, '.', \
                     '_' or '-', got {id:?}"
                ));
            }
        }
        Ok(())
    }
}
