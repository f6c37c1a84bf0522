//! Cluster-wide presence against a real Redis (see common/mod.rs): a user with connections on
//! several nodes is online until the last closes, each transition is seen by one node only,
//! a dead node is reaped once, and a Redis restart is repaired by restoring.

mod common;

use common::{Redis, WAIT};
use corecast_cluster::bus::Done;
use corecast_cluster::{Bus, BusEvent, ClusterPresence};

/// A node's bus, waited up, its events, and its presence.
struct Node {
    _bus: Bus,
    events: crossbeam_channel::Receiver<BusEvent>,
    presence: ClusterPresence,
}

impl Node {
    /// Waits for the bus to be connected again (after a Redis restart).
    fn wait_up(&self) {
        loop {
            match self.events.recv_timeout(WAIT).expect("the bus comes back") {
                BusEvent::Up { .. } => return,
                _ => continue,
            }
        }
    }
}

fn node(redis: &Redis, id: &str) -> Node {
    let (bus, events) = common::bus_up(redis);
    let presence = ClusterPresence::new(bus.handle(), "t:", id);
    Node {
        _bus: bus,
        events,
        presence,
    }
}

/// Runs `call` with a `Done` and waits for its answer.
fn wait<T: Send + 'static>(call: impl FnOnce(Done<T>)) -> T {
    let (tx, rx) = crossbeam_channel::bounded(1);
    call(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(WAIT)
        .expect("an answer")
        .expect("Redis took it")
}

fn online(n: &Node) -> Vec<u64> {
    let mut all = wait(|d| n.presence.online(d));
    all.sort_unstable();
    all
}

#[test]
fn a_user_on_two_nodes_is_online_until_the_last_connection_closes() {
    let redis = Redis::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    assert!(wait(|d| a.presence.up(7, d)), "first node: announce online");
    assert!(
        !wait(|d| b.presence.up(7, d)),
        "second node: nothing to announce"
    );
    assert!(!wait(|d| a.presence.up(7, d)), "said twice: still nothing");
    assert_eq!(online(&b), vec![7]);
    assert!(!wait(|d| a.presence.down(7, d)), "b still holds one");
    assert_eq!(online(&a), vec![7]);
    assert!(
        wait(|d| b.presence.down(7, d)),
        "the last: announce offline"
    );
    assert!(!wait(|d| b.presence.down(7, d)), "said twice: nothing");
    assert_eq!(online(&a), Vec::<u64>::new());
}

#[test]
fn many_nodes_racing_see_each_transition_exactly_once() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..4).map(|i| node(&redis, &format!("n{i}"))).collect();
    // Every node brings the same 200 users up at once, then down at once.
    for phase in [true, false] {
        let (tx, rx) = crossbeam_channel::unbounded();
        for n in &nodes {
            for user in 0..200u64 {
                let tx = tx.clone();
                let done: Done<bool> = Box::new(move |r| {
                    let _ = tx.send((user, r.expect("Redis took it")));
                });
                if phase {
                    n.presence.up(user, done);
                } else {
                    n.presence.down(user, done);
                }
            }
        }
        let mut announced = vec![0; 200];
        for _ in 0..nodes.len() * 200 {
            let (user, first_or_last) = rx.recv_timeout(WAIT).expect("every answer");
            announced[user as usize] += u32::from(first_or_last);
        }
        assert!(
            announced.iter().all(|&n| n == 1),
            "one announcement per user, phase online={phase}"
        );
    }
}

#[test]
fn a_dead_node_is_reaped_once_and_only_its_users_without_another_node_go_offline() {
    let redis = Redis::start();
    let (dead, a, b) = (node(&redis, "dead"), node(&redis, "a"), node(&redis, "b"));
    let users: Vec<u64> = (1..=2500).collect();
    for &u in &users {
        wait(|d| dead.presence.up(u, d));
    }
    // Users 1..=10 also have a connection on a.
    for u in 1..=10 {
        wait(|d| a.presence.up(u, d));
    }
    // Two survivors reap at once, step by step, as the registry would have them.
    let reap = |n: &Node| {
        let mut gone = Vec::new();
        loop {
            let (left, mut g) = wait(|d| n.presence.reap("dead", d));
            gone.append(&mut g);
            if left == 0 {
                return gone;
            }
        }
    };
    let (mut from_a, from_b) = std::thread::scope(|s| {
        let ra = s.spawn(|| reap(&a));
        let rb = s.spawn(|| reap(&b));
        (ra.join().unwrap(), rb.join().unwrap())
    });
    from_a.extend(from_b);
    from_a.sort_unstable();
    assert_eq!(
        from_a,
        (11..=2500).collect::<Vec<u64>>(),
        "each once, between them"
    );
    assert_eq!(online(&a), (1..=10).collect::<Vec<u64>>());
    assert_eq!(
        wait(|d| b.presence.reap("dead", d)),
        (0, vec![]),
        "nothing left"
    );
}

#[test]
fn after_a_redis_restart_nodes_restore_their_users() {
    let mut redis = Redis::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    wait(|d| a.presence.up(1, d));
    wait(|d| b.presence.up(1, d));
    wait(|d| b.presence.up(2, d));
    redis.restart();
    // Each bus reconnects by itself; then its node restores its users.
    a.wait_up();
    b.wait_up();
    assert_eq!(online(&a), Vec::<u64>::new(), "Redis lost everything");
    wait(|d| a.presence.restore(&[1], d));
    wait(|d| b.presence.restore(&[1, 2], d));
    assert_eq!(online(&a), vec![1, 2]);
    assert!(!wait(|d| a.presence.down(1, d)), "b still holds 1");
    assert!(
        wait(|d| b.presence.down(1, d)),
        "restored per node, as before"
    );
}
