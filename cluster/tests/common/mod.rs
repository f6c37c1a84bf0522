//! A `redis-server` of each test's own (Debian's package; `scripts/test.sh` installs it), on
//! a loopback port below 32768, with no persistence.
// Each test binary uses part of this module.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// How long a test waits for anything before it fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A `redis-server` of the test's own, stopped on drop.
pub struct Redis {
    pub port: u16,
    pub child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        // Ports below the ephemeral range, spread by process id so parallel test binaries
        // rarely meet, and never the same twice in this process (tests run in parallel); a
        // taken port is skipped.
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let base = 21_000 + (std::process::id() % 500) as u16 * 8;
        let _ = NEXT.compare_exchange(0, base, Ordering::SeqCst, Ordering::SeqCst);
        for _ in 0..4_000 {
            let port = NEXT.fetch_add(1, Ordering::SeqCst);
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            let mut redis = Redis { port, child: None };
            if redis.spawn() {
                return redis;
            }
        }
        panic!("no free loopback port for redis-server");
    }

    /// Starts redis-server on `self.port`; false if it exited (the port was taken meanwhile).
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian: apt-get install redis-server)");
        self.child = Some(child);
        // Start-up of a helper process, not synchronisation inside a test: poll its port.
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not listen on {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server came back on port {}", self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A bus to `redis`, waited up, and the receiver of its events (after that first `Up`).
pub fn bus_up(
    redis: &Redis,
) -> (
    corecast_cluster::Bus,
    crossbeam_channel::Receiver<corecast_cluster::BusEvent>,
) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let bus = corecast_cluster::Bus::start(
        corecast_cluster::BusConfig::new(redis.url()),
        std::sync::Arc::new(move |e| {
            let _ = tx.send(e);
        }),
    )
    .expect("the bus starts");
    assert!(matches!(
        rx.recv_timeout(WAIT).expect("the bus comes up"),
        corecast_cluster::BusEvent::Up { .. }
    ));
    (bus, rx)
}
