//! The gateway library's one error type: why the gateway (or a library call such as minting a
//! token) could not do what it was asked, in words that say what to check.
//!
//! Every error that has a cause keeps it as its `source`, so the binary's report (anyhow's
//! "Caused by:" list in `main.rs`) shows the OS or library error under our message. Errors a
//! client is told are not here: those are the event error codes (`events::Code`) and the close
//! codes (`corecast_wire::Close`).

use std::net::SocketAddr;
use std::path::PathBuf;

/// A failure of the gateway library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel or the process limits do not meet glommio's needs; the text names the fix
    /// (see `startup::io_uring_problem`).
    #[error("{0}")]
    Kernel(String),
    /// The configured JWT secret is refused; the text says why (see `auth::secret_problem`).
    #[error("{0}")]
    Secret(String),
    /// RS256 or ES256 is configured without a public key file.
    #[error("auth.jwt_public_key_file is required for RS256/ES256")]
    NoPublicKeyFile,
    /// The public key file could not be read.
    #[error("cannot read JWT public key {}", path.display())]
    ReadPublicKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The public key file is not a PEM key of the configured algorithm's kind (`kind` names
    /// it: "an RSA public key", "an EC (P-256) public key").
    #[error("{} is not {kind} in PEM", path.display())]
    BadPublicKey {
        path: PathBuf,
        kind: &'static str,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// A token could not be signed.
    #[error("cannot sign token")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// The system clock is before 1970, so no token time can be written.
    #[error("clock before 1970")]
    Clock(#[source] std::time::SystemTimeError),
    /// A listening socket could not be bound (`what` is "" for the public port, " (internal)"
    /// for the admin listener): the address is in use, not local, or needs privileges.
    #[error("cannot listen on {addr}{what}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The public listening socket reports no IP address.
    #[error("listening socket has no IP address")]
    NoIpAddress,
    /// Cluster mode could not start: the bus (Redis) named by `CORECAST_CLUSTER` did not
    /// answer; the text says what to check.
    #[error("cannot join the cluster: {0}")]
    Cluster(String),
    /// The store could not be opened.
    #[error("cannot open the store")]
    Store(#[source] corecast_storage::Error),
    /// A resource the gateway needs could not be created (`what` says which: "the shards'
    /// doorbell sockets", "the internal listener's poll").
    #[error("cannot create {what}")]
    Resource {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A thread could not be started (`what` says which: "the ticker thread", "internal
    /// worker 3").
    #[error("cannot start {what}")]
    Thread {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A shard's glommio executor could not start. The source is glommio's error as an
    /// `io::Error` (glommio's own type holds a thread's panic payload, which is not `Sync`).
    #[error("cannot start a glommio executor (io_uring). {}", EXECUTOR_CHECKS)]
    Executor(#[source] std::io::Error),
    /// A shard's executor started but the shard never reported ready.
    #[error(
        "cannot start a glommio executor (io_uring): a shard did not start within {secs} s. {}",
        EXECUTOR_CHECKS
    )]
    ShardNotReady { secs: u64 },
    /// Another system call at start-up failed (socket options, the listener's address); the
    /// OS error says which.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The usual causes of an executor that does not start.
const EXECUTOR_CHECKS: &str = "Check that io_uring is enabled (sysctl kernel.io_uring_disabled \
    must be 0; containers may block io_uring_setup in their seccomp profile) and that the \
    locked-memory limit is high enough (`ulimit -l unlimited`).";

/// A result of the gateway library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
