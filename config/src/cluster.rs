//! The `[cluster]` section: several gateway nodes as one, over a Redis bus
//! (docs/operations.md, "Several nodes").

use corecast_config_value::{optional, optional_parse, parse};
use serde::Deserialize;
use std::net::SocketAddr;

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
    /// Where the other nodes reach this node's public listener (`ip:port`), to forward the
    /// long-polling requests and upgrades of its sessions that reach them. Unset: the public
    /// listen address, which must then name an interface (not 0.0.0.0 or [::]).
    #[arg(
        long = "cluster-advertise",
        env = "CORECAST_CLUSTER_ADVERTISE",
        value_parser = optional_parse::<SocketAddr>()
    )]
    pub advertise: std::option::Option<SocketAddr>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            url: None,
            node_id: None,
            dead_after_secs: 30,
            advertise: None,
        }
    }
}

impl ClusterConfig {
    /// Whether the node runs as part of a cluster.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// Where the other nodes reach this node: `advertise`, or else the public listen
    /// address when it names an interface.
    pub fn advertised(&self, listen: SocketAddr) -> Result<SocketAddr, String> {
        match self.advertise {
            Some(addr) if !addr.ip().is_unspecified() && addr.port() != 0 => Ok(addr),
            Some(addr) => Err(format!(
                "cluster.advertise (CORECAST_CLUSTER_ADVERTISE) must be an address the other \
                 nodes can reach, got {addr}"
            )),
            None if !listen.ip().is_unspecified() => Ok(listen),
            None => Err(format!(
                "cluster mode listens on {listen}, which other nodes cannot reach: set \
                 cluster.advertise (CORECAST_CLUSTER_ADVERTISE) to this node's ip:port"
            )),
        }
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
