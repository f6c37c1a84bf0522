//! corecast's storage: the data model (users, groups and members, messages with their readers,
//! presence, the notification outbox) and the backends that persist it.
//!
//! Every backend is reached the same way: a [`StoreHandle`] sends a [`Request`] over a bounded
//! channel to the backend's own threads, and the backend calls the request's [`Reply`] when the
//! work is durable (or has failed). Nothing here ever runs on a gateway shard's reactor, and a
//! caller on a reactor never blocks: [`StoreHandle::submit`] hands the request back when the
//! queue is full.
//!
//! Backends:
//! - [`embedded`]: SQLite in a local data folder, the zero-setup default. One writer thread
//!   group-commits everything queued since its last commit in one transaction.
//! - [`scylla`]: ScyllaDB (or Apache Cassandra) through the `scylla` driver, on its own tokio
//!   threads, for production and for several gateway nodes sharing one store.

pub mod config;
pub mod embedded;
mod error;
pub mod model;
pub mod page_cache;
mod request;
pub mod scylla;
mod wal_vfs;

pub use config::{StoreConfig, StoreKind};
pub use error::Error;
pub use model::*;
pub use request::{Blocking, Reply, Request, StoreHandle};

/// Which backend to open, and its settings ([`StoreConfig::backend`] makes one from `[store]`).
#[derive(Debug, Clone)]
pub enum Backend {
    /// SQLite files in `data_dir`.
    Embedded {
        data_dir: std::path::PathBuf,
        /// [`embedded::Options::commit_budget`].
        commit_budget: std::time::Duration,
    },
    /// ScyllaDB/Cassandra cluster (see [`scylla::ScyllaConfig`] for the fields).
    Scylla {
        /// Contact points, `host:port`.
        nodes: Vec<String>,
        keyspace: String,
        /// CQL replication map without braces.
        replication: String,
        /// CQL consistency level name, e.g. `LOCAL_QUORUM`.
        consistency: String,
        /// Preferred (local) datacenter, if any.
        local_dc: Option<String>,
        /// Create the keyspace and tables at start.
        migrate: bool,
    },
}

impl Backend {
    /// The embedded store in `data_dir`, with its default settings.
    pub fn embedded(data_dir: impl Into<std::path::PathBuf>) -> Self {
        Backend::Embedded {
            data_dir: data_dir.into(),
            commit_budget: embedded::Options::default().commit_budget,
        }
    }

    /// The ScyllaDB settings, when this is the ScyllaDB backend.
    pub fn scylla(&self) -> Option<scylla::ScyllaConfig> {
        match self {
            Backend::Scylla {
                nodes,
                keyspace,
                replication,
                consistency,
                local_dc,
                migrate,
            } => Some(scylla::ScyllaConfig {
                nodes: nodes.clone(),
                keyspace: keyspace.clone(),
                replication: replication.clone(),
                consistency: consistency.clone(),
                local_dc: local_dc.clone(),
                migrate: *migrate,
            }),
            Backend::Embedded { .. } => None,
        }
    }
}

/// Creates the schema of the configured backend (`corecast migrate`). Blocking. The embedded
/// store creates its schema whenever it opens, so this only opens and checks it.
pub fn migrate(config: &Backend) -> Result<(), Error> {
    match config {
        Backend::Embedded { data_dir, .. } => embedded::connect(data_dir).map(|_| ()),
        Backend::Scylla { .. } => {
            scylla::migrate(&config.scylla().expect("invariant: matched Scylla"))
        }
    }
}

/// Opens the configured backend and starts its threads.
pub fn open(config: &Backend) -> Result<StoreHandle, Error> {
    match config {
        Backend::Embedded {
            data_dir,
            commit_budget,
        } => embedded::open(
            data_dir,
            embedded::Options {
                commit_budget: *commit_budget,
                ..embedded::Options::default()
            },
        ),
        Backend::Scylla { .. } => {
            scylla::open(&config.scylla().expect("invariant: matched Scylla"))
        }
    }
}
