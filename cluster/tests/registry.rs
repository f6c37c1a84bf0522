//! The node registry against a real Redis (see common/mod.rs).

mod common;

use common::{Redis, WAIT};
use corecast_cluster::{Bus, BusConfig, BusEvent, Change, ChangeHandler, Registry, RegistryConfig};
use crossbeam_channel::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One node: its bus (waited up) and its registry, whose changes land in a channel.
struct Node {
    registry: Option<Registry>,
    changes: Receiver<Change>,
    bus: Bus,
    bus_events: Receiver<BusEvent>,
}

const DEAD_AFTER: Duration = Duration::from_millis(900);
const CHECK: Duration = Duration::from_millis(100);

impl Node {
    fn start(redis: &Redis, id: &str) -> Node {
        let (etx, bus_events) = crossbeam_channel::unbounded();
        let bus = Bus::start(
            BusConfig::new(redis.url()),
            Arc::new(move |e| {
                let _ = etx.send(e);
            }),
        )
        .expect("the bus starts");
        let node_up = bus_events.recv_timeout(WAIT).expect("the bus comes up");
        assert!(matches!(node_up, BusEvent::Up { .. }));
        let (ctx, changes) = crossbeam_channel::unbounded();
        let handler: ChangeHandler = Arc::new(move |c| {
            let _ = ctx.send(c);
        });
        let mut config = RegistryConfig::new("t:", id, format!("addr of {id}"));
        config.dead_after = DEAD_AFTER;
        config.check_every = CHECK;
        let registry = Registry::start(bus.handle(), config, handler);
        Node {
            registry: Some(registry),
            changes,
            bus,
            bus_events,
        }
    }

    fn next(&self, what: &str) -> Change {
        self.changes
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no change: {what}"))
    }
}

#[test]
fn nodes_see_each_other_join_and_a_graceful_stop_leave() {
    let redis = Redis::start();
    let a = Node::start(&redis, "a");
    let mut b = Node::start(&redis, "b");
    assert_eq!(
        a.next("a sees b"),
        Change::Joined {
            id: "b".into(),
            info: "addr of b".into()
        }
    );
    assert_eq!(
        b.next("b sees a"),
        Change::Joined {
            id: "a".into(),
            info: "addr of a".into()
        }
    );
    let stopped = Instant::now();
    drop(b.registry.take()); // deregisters
    assert_eq!(a.next("a sees b leave"), Change::Left { id: "b".into() });
    assert!(
        stopped.elapsed() < DEAD_AFTER,
        "a graceful stop is seen before the key would expire ({:?})",
        stopped.elapsed()
    );
    drop(b.bus);
}

#[test]
fn a_node_that_dies_is_seen_leaving_within_dead_after_and_two_checks() {
    let redis = Redis::start();
    let a = Node::start(&redis, "a");
    let mut b = Node::start(&redis, "b");
    assert!(matches!(a.next("a sees b"), Change::Joined { .. }));
    let died = Instant::now();
    b.registry.take().unwrap().abandon(); // no deregistration, as a crash
    assert_eq!(a.next("a sees b leave"), Change::Left { id: "b".into() });
    let took = died.elapsed();
    assert!(
        took >= DEAD_AFTER - CHECK,
        "not before its key could expire ({took:?})"
    );
    assert!(
        took <= DEAD_AFTER + 4 * CHECK + Duration::from_millis(500),
        "bounded by dead_after and the checks ({took:?})"
    );
}

#[test]
fn a_redis_restart_reports_no_live_node_as_gone() {
    let mut redis = Redis::start();
    let a = Node::start(&redis, "a");
    let b = Node::start(&redis, "b");
    assert!(matches!(a.next("a sees b"), Change::Joined { .. }));
    assert!(matches!(b.next("b sees a"), Change::Joined { .. }));
    redis.restart(); // every key lost
    for node in [&a, &b] {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match node.bus_events.recv_timeout(left) {
                Ok(BusEvent::Up { epoch: 2 }) => break,
                Ok(_) => continue,
                Err(_) => panic!("the bus did not come back"),
            }
        }
    }
    // Both put their keys back at their next check. Watch a whole expiry period of checks:
    // neither may be reported gone meanwhile.
    let watch_until = Instant::now() + DEAD_AFTER + 3 * CHECK;
    while let Some(left) = watch_until.checked_duration_since(Instant::now()) {
        for node in [&a, &b] {
            if let Ok(c) = node.changes.recv_timeout(left.min(CHECK)) {
                panic!("a change after the restart: {c:?}");
            }
        }
    }
}

/// Claims `count` generators of 8 for node `id`, as it starts.
fn claim(bus: &Bus, id: &str, count: u16) -> Result<u16, corecast_cluster::ClaimError> {
    let mut config = RegistryConfig::new("t:", id, "");
    config.dead_after = DEAD_AFTER;
    corecast_cluster::claim_generators(&bus.handle(), &config, count, 8, WAIT)
}

#[test]
fn live_nodes_hold_disjoint_id_generators_until_they_leave() {
    let redis = Redis::start();
    let (bus, _) = common::bus_up(&redis);
    let a = claim(&bus, "a", 2).expect("a block for a");
    let b = claim(&bus, "b", 2).expect("a block for b");
    let c = claim(&bus, "c", 4).expect("a block for c");
    let blocks = [(a, 2), (b, 2), (c, 4)];
    for (i, x) in blocks.iter().enumerate() {
        for y in &blocks[i + 1..] {
            assert!(
                x.0 + x.1 <= y.0 || y.0 + y.1 <= x.0,
                "{x:?} and {y:?} overlap"
            );
        }
    }
    assert_eq!(
        claim(&bus, "a", 2).unwrap(),
        a,
        "a restarted node takes its own back"
    );
    assert!(matches!(
        claim(&bus, "d", 2),
        Err(corecast_cluster::ClaimError::Full { .. })
    ));
    // A registered node keeps its block; a node that stopped refreshing loses it.
    let (etx, _events) = crossbeam_channel::unbounded();
    let d_bus = Bus::start(
        BusConfig::new(redis.url()),
        Arc::new(move |e| {
            let _ = etx.send(e);
        }),
    )
    .expect("the bus starts");
    let mut config = RegistryConfig::new("t:", "b", "addr of b");
    config.dead_after = DEAD_AFTER;
    config.check_every = CHECK;
    config.generators = (b, 2);
    let registry = Registry::start(d_bus.handle(), config, Arc::new(|_| {}));
    let deadline = Instant::now() + WAIT;
    let d = loop {
        match claim(&bus, "d", 2) {
            Ok(d) => break d,
            Err(_) if Instant::now() < deadline => std::thread::sleep(CHECK),
            Err(e) => panic!("a's and c's blocks were not freed: {e}"),
        }
    };
    assert_eq!(
        d, a,
        "the first free block: a's, expired; b's registry keeps b's"
    );
    // b leaving gives its block back at once.
    drop(registry);
    assert_eq!(claim(&bus, "e", 2).unwrap(), b);
}
