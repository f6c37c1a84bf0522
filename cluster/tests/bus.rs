//! The bus against a real Redis: `redis-server` (Debian's package; `scripts/test.sh` installs
//! it), started by each test on its own loopback port below 32768 with no persistence.

use bytes::Bytes;
mod common;

use common::{Redis, WAIT};
use corecast_cluster::{Bus, BusConfig, BusError, BusEvent, Done, Handler};
use crossbeam_channel::{Receiver, Sender};

use std::process::Command;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A bus whose events land in a channel the test reads.
struct Node {
    bus: Bus,
    events: Receiver<BusEvent>,
}

impl Node {
    fn start(url: &str) -> Node {
        Node::with(BusConfig::new(url), None)
    }

    fn with(config: BusConfig, gate: Option<Arc<Gate>>) -> Node {
        let (tx, events) = crossbeam_channel::unbounded();
        let handler: Handler = Arc::new(move |e: BusEvent| {
            if let (Some(gate), BusEvent::Message { .. }) = (&gate, &e) {
                gate.hold();
            }
            let _ = tx.send(e);
        });
        let node = Node {
            bus: Bus::start(config, handler).expect("the bus starts"),
            events,
        };
        node.expect(|e| matches!(e, BusEvent::Up { epoch: 1 }), "connected");
        node
    }

    /// The next event matching `want`, skipping others; fails after WAIT.
    fn expect(&self, want: impl Fn(&BusEvent) -> bool, what: &str) -> BusEvent {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if want(&e) => return e,
                Ok(_) => continue,
                Err(_) => panic!("no event: {what}"),
            }
        }
    }

    fn messages(&self, n: usize) -> Vec<(String, Bytes)> {
        (0..n)
            .map(
                |_| match self.expect(|e| matches!(e, BusEvent::Message { .. }), "a message") {
                    BusEvent::Message { channel, payload } => (channel, payload),
                    _ => unreachable!(),
                },
            )
            .collect()
    }

    fn subscribe(&self, channel: &str) -> Result<(), BusError> {
        let (done, rx) = answer();
        self.bus.handle().subscribe(channel, done);
        wait(rx)
    }

    fn unsubscribe(&self, channel: &str) -> Result<(), BusError> {
        let (done, rx) = answer();
        self.bus.handle().unsubscribe(channel, done);
        wait(rx)
    }

    fn publish(&self, channel: &str, payload: &'static [u8]) -> Result<u64, BusError> {
        let (done, rx) = answer();
        self.bus
            .handle()
            .publish(channel, Bytes::from_static(payload), Some(done));
        wait(rx)
    }

    fn command(&self, cmd: redis::Cmd) -> Result<redis::Value, BusError> {
        let (done, rx) = answer();
        self.bus.handle().command(cmd, done);
        wait(rx)
    }

    fn subscribers(&self, channel: &str) -> i64 {
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB").arg(channel);
        match self.command(cmd).expect("PUBSUB NUMSUB answers") {
            redis::Value::Array(v) => match v.get(1) {
                Some(redis::Value::Int(n)) => *n,
                other => panic!("NUMSUB answered {other:?}"),
            },
            other => panic!("NUMSUB answered {other:?}"),
        }
    }
}

fn answer<T: Send + 'static>() -> (Done<T>, Receiver<Result<T, BusError>>) {
    let (tx, rx): (Sender<_>, _) = crossbeam_channel::bounded(1);
    (
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
        rx,
    )
}

fn wait<T>(rx: Receiver<Result<T, BusError>>) -> Result<T, BusError> {
    rx.recv_timeout(WAIT).expect("the bus answers every call")
}

/// Holds the bus thread inside its handler until released (to fill its queue).
struct Gate {
    state: Mutex<(bool, bool)>, // (entered, released)
    cv: std::sync::Condvar,
}

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new((false, false)),
            cv: std::sync::Condvar::new(),
        })
    }

    fn hold(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 = true;
        self.cv.notify_all();
        while !s.1 {
            s = self.cv.wait(s).unwrap();
        }
    }

    fn wait_entered(&self) {
        let mut s = self.state.lock().unwrap();
        while !s.0 {
            s = self.cv.wait_timeout(s, WAIT).unwrap().0;
        }
    }

    fn release(&self) {
        self.state.lock().unwrap().1 = true;
        self.cv.notify_all();
    }
}

#[test]
fn messages_published_after_a_confirmed_subscribe_arrive_in_order() {
    let redis = Redis::start();
    let a = Node::start(&redis.url());
    let b = Node::start(&redis.url());
    a.subscribe("g:1").unwrap();
    let payloads: Vec<Bytes> = (0..2_000)
        .map(|i| Bytes::from(format!("frame {i}")))
        .collect();
    let h = b.bus.handle();
    let (last, receivers) = answer();
    let mut last = Some(last);
    for (i, p) in payloads.iter().enumerate() {
        let done = if i + 1 == payloads.len() {
            last.take()
        } else {
            None
        };
        h.publish("g:1", p.clone(), done);
    }
    assert_eq!(
        wait(receivers),
        Ok(1),
        "the last publish reached one subscriber"
    );
    let got = a.messages(payloads.len());
    assert!(got.iter().all(|(c, _)| c == "g:1"));
    let got: Vec<Bytes> = got.into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        got, payloads,
        "every message, byte for byte, in publish order"
    );
}

#[test]
fn subscriptions_are_counted_and_the_last_unsubscribe_leaves_the_channel() {
    let redis = Redis::start();
    let a = Node::start(&redis.url());
    let b = Node::start(&redis.url());
    a.subscribe("g:2").unwrap();
    a.subscribe("g:2").unwrap();
    assert_eq!(
        b.subscribers("g:2"),
        1,
        "one Redis subscription for two wants"
    );
    a.unsubscribe("g:2").unwrap();
    assert_eq!(b.subscribers("g:2"), 1, "still wanted once");
    assert_eq!(b.publish("g:2", b"still here"), Ok(1));
    assert_eq!(a.messages(1)[0].1, Bytes::from_static(b"still here"));
    a.unsubscribe("g:2").unwrap();
    assert_eq!(
        b.subscribers("g:2"),
        0,
        "the last unsubscribe left the channel"
    );
    assert_eq!(b.publish("g:2", b"nobody"), Ok(0));
    // An unsubscribe of a channel never subscribed is harmless.
    a.unsubscribe("g:never").unwrap();
}

#[test]
fn commands_answer_in_order_with_redis_errors_reported() {
    let redis = Redis::start();
    let a = Node::start(&redis.url());
    let mut set = redis::cmd("SET");
    set.arg("k").arg("v");
    assert_eq!(a.command(set), Ok(redis::Value::Okay));
    let mut get = redis::cmd("GET");
    get.arg("k");
    assert_eq!(a.command(get), Ok(redis::Value::BulkString(b"v".to_vec())));
    let mut incr = redis::cmd("INCR");
    incr.arg("k");
    match a.command(incr) {
        Err(BusError::Redis(msg)) => assert!(msg.contains("not an integer"), "{msg}"),
        other => panic!("INCR of a string answered {other:?}"),
    }
}

#[test]
fn after_a_redis_restart_the_bus_reconnects_and_subscribes_again() {
    let mut redis = Redis::start();
    let a = Node::start(&redis.url());
    let b = Node::start(&redis.url());
    a.subscribe("g:3").unwrap();
    redis.kill();
    a.expect(|e| matches!(e, BusEvent::Down { epoch: 1 }), "a: down");
    b.expect(|e| matches!(e, BusEvent::Down { epoch: 1 }), "b: down");
    assert!(!a.bus.handle().is_up());
    assert_eq!(a.publish("g:3", b"lost"), Err(BusError::Down));
    assert_eq!(
        a.subscribe("g:4"),
        Err(BusError::Down),
        "refused for now, wanted still"
    );
    redis.restart();
    a.expect(|e| matches!(e, BusEvent::Up { epoch: 2 }), "a: up again");
    b.expect(|e| matches!(e, BusEvent::Up { epoch: 2 }), "b: up again");
    assert_eq!(b.publish("g:3", b"after"), Ok(1), "g:3 subscribed again");
    assert_eq!(b.publish("g:4", b"wanted while down"), Ok(1));
    let got: Vec<Bytes> = a.messages(2).into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        got,
        [
            Bytes::from_static(b"after"),
            Bytes::from_static(b"wanted while down")
        ]
    );
}

#[test]
fn a_full_queue_fails_calls_at_once_and_never_blocks() {
    let redis = Redis::start();
    let gate = Gate::new();
    let mut config = BusConfig::new(redis.url());
    config.queue = 8;
    let a = Node::with(config, Some(gate.clone()));
    let b = Node::start(&redis.url());
    a.subscribe("g:5").unwrap();
    assert_eq!(b.publish("g:5", b"hold"), Ok(1));
    gate.wait_entered(); // a's bus thread is now busy in its handler
    let h = a.bus.handle();
    let mut answers = Vec::new();
    for _ in 0..9 {
        let (done, rx) = answer::<u64>();
        h.publish("g:5", Bytes::from_static(b"x"), Some(done));
        answers.push(rx);
    }
    let ninth = answers.pop().unwrap();
    assert_eq!(
        ninth.try_recv().expect("answered on the caller's thread"),
        Err(BusError::Overloaded)
    );
    gate.release();
    for rx in answers {
        assert_eq!(
            wait(rx),
            Ok(1),
            "queued calls go through once the bus is free"
        );
    }
}

#[test]
fn a_url_that_is_not_redis_is_refused_at_start() {
    let handler: Handler = Arc::new(|_| {});
    match Bus::start(BusConfig::new("http://127.0.0.1:1"), handler) {
        Err(BusError::BadUrl(_)) => {}
        Err(e) => panic!("refused with {e}"),
        Ok(_) => panic!("accepted a non-Redis URL"),
    }
}

#[test]
fn a_redis_that_stops_answering_is_noticed_by_the_ping() {
    let redis = Redis::start();
    let mut config = BusConfig::new(redis.url());
    config.ping_every = Duration::from_millis(100);
    config.timeout = Duration::from_millis(300);
    let a = Node::with(config, None);
    // Subscribed, a connection answers PING differently (an array): still alive.
    a.subscribe("g:6").unwrap();
    std::thread::sleep(Duration::from_millis(500)); // five pings
    assert!(
        a.events.try_recv().is_err(),
        "no event while Redis answers the pings"
    );
    let pid = redis.child.as_ref().expect("running").id().to_string();
    // SIGSTOP: the connection stays open, nothing answers (as behind a lost network).
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(ok.success());
    };
    signal("-STOP");
    a.expect(
        |e| matches!(e, BusEvent::Down { epoch: 1 }),
        "down after a lost ping",
    );
    signal("-CONT");
    a.expect(
        |e| matches!(e, BusEvent::Up { epoch: 2 }),
        "up once Redis answers",
    );
    a.subscribe("g:6").unwrap();
}

#[test]
fn a_subscribe_redis_refuses_gets_its_error_and_the_connection_stays_up() {
    let redis = Redis::start();
    let admin = Node::start(&redis.url());
    // A user who may run commands but use no pub/sub channel.
    let mut acl = redis::cmd("ACL");
    for word in [
        "SETUSER",
        "nochan",
        "on",
        ">pw",
        "~*",
        "+@all",
        "resetchannels",
    ] {
        acl.arg(word);
    }
    assert_eq!(admin.command(acl), Ok(redis::Value::Okay));
    let a = Node::start(&format!("redis://nochan:pw@127.0.0.1:{}", redis.port));
    match a.subscribe("g:7") {
        Err(BusError::Redis(msg)) => assert!(msg.contains("no permissions"), "{msg}"),
        other => panic!("the subscribe was answered {other:?}"),
    }
    assert_eq!(admin.subscribers("g:7"), 0);
    // Not taken for a lost connection: no Down, commands still go through.
    assert_eq!(
        a.command(redis::cmd("PING")),
        Ok(redis::Value::SimpleString("PONG".into()))
    );
    assert!(
        a.events.try_recv().is_err(),
        "no event: the connection stayed up"
    );
}
