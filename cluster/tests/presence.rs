//! Cluster-wide presence against a real Redis (see common/mod.rs): a user with connections on
//! several nodes is online until the last closes, each transition is seen by one node only,
//! every node hears the changes in Redis's order, offline is announced only when settled, a
//! dead node is reaped once, and a Redis restart is repaired by restoring.

mod common;

use bytes::Bytes;
use common::{Redis, WAIT};
use corecast_cluster::bus::Done;
use corecast_cluster::presence::{parse_news, News, Up};
use corecast_cluster::{Bus, BusEvent, ClusterPresence};

/// A node's bus, waited up, its events, and its presence.
struct Node {
    _bus: Bus,
    events: crossbeam_channel::Receiver<BusEvent>,
    presence: ClusterPresence,
}

impl Node {
    /// Subscribes to the presence channel (waited for).
    fn listen(&self, bus: &Bus) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        bus.handle().subscribe(
            self.presence.channel(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv_timeout(WAIT)
            .expect("an answer")
            .expect("subscribed");
    }

    /// The next `n` presence changes published, as (sign, user, groups) text.
    fn news(&self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            match self
                .events
                .recv_timeout(WAIT)
                .expect("the change is published")
            {
                BusEvent::Message { payload, .. } => {
                    let News {
                        user,
                        online,
                        announce,
                    } = parse_news(&payload).expect("a presence change");
                    let sign = match (online, announce.is_some()) {
                        (true, true) => '+',
                        (false, true) => '-',
                        (true, false) => '>',
                        (false, false) => '<',
                    };
                    let groups = String::from_utf8_lossy(announce.unwrap_or_default());
                    out.push(format!("{sign}{user}{groups}"));
                }
                _ => continue,
            }
        }
        out
    }

    fn up(&self, user: u64) -> Up {
        wait(|d| self.presence.up(user, b"[g]", d))
    }

    fn down(&self, user: u64) -> bool {
        wait(|d| self.presence.down(user, d))
    }

    fn settle(&self, users: &[u64]) -> Vec<u64> {
        let users: Vec<(u64, Bytes)> = users
            .iter()
            .map(|&u| (u, Bytes::from_static(b"[h]")))
            .collect();
        let mut got = wait(|d| self.presence.settle(&users, d));
        got.sort_unstable();
        got
    }

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
    let node = Node {
        _bus: bus,
        events,
        presence,
    };
    node.listen(&node._bus);
    node
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
    assert_eq!(a.up(7), Up::Announced, "first node: announce online");
    assert_eq!(b.up(7), Up::Elsewhere, "second node: nothing changed");
    assert_eq!(a.up(7), Up::Elsewhere, "said twice: still nothing");
    assert_eq!(online(&b), vec![7]);
    assert!(!a.down(7), "b still holds one");
    assert_eq!(online(&a), vec![7]);
    assert!(b.down(7), "the last: online nowhere");
    assert!(!b.down(7), "said twice: nothing");
    assert_eq!(online(&a), Vec::<u64>::new());
    assert_eq!(
        b.settle(&[7]),
        vec![7],
        "the window ended: announced offline"
    );
    assert_eq!(a.settle(&[7]), Vec::<u64>::new(), "once");
    assert_eq!(
        a.news(3),
        ["+7[g]", "<7", "-7[h]"],
        "every node hears each change once, in order"
    );
    assert_eq!(b.news(3), ["+7[g]", "<7", "-7[h]"]);
}

#[test]
fn leaving_one_node_for_another_within_the_window_is_never_announced() {
    let redis = Redis::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    assert_eq!(a.up(1), Up::Announced);
    assert!(a.down(1), "online nowhere: replicas hear it at once");
    assert_eq!(
        b.up(1),
        Up::Back,
        "back within the window: not announced again"
    );
    assert_eq!(
        a.settle(&[1]),
        Vec::<u64>::new(),
        "a's window ends: online on b"
    );
    assert!(b.down(1));
    assert_eq!(b.settle(&[1]), vec![1]);
    assert_eq!(
        a.up(1),
        Up::Announced,
        "after the offline announcement, online again"
    );
    assert_eq!(
        b.news(6),
        ["+1[g]", "<1", ">1", "<1", "-1[h]", "+1[g]"],
        "reachability follows every flip; announcements one pair per stay"
    );
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
                if phase {
                    let done: Done<Up> = Box::new(move |r| {
                        let _ = tx.send((user, r.expect("Redis took it") != Up::Elsewhere));
                    });
                    n.presence.up(user, b"[]", done);
                } else {
                    let done: Done<bool> = Box::new(move |r| {
                        let _ = tx.send((user, r.expect("Redis took it")));
                    });
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
        dead.up(u);
    }
    // Users 1..=10 also have a connection on a.
    for u in 1..=10 {
        a.up(u);
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
    let gone: Vec<u64> = (11..=2500).collect();
    assert_eq!(a.settle(&gone), gone, "then announced offline, once");
}

#[test]
fn after_a_redis_restart_nodes_restore_their_users() {
    let mut redis = Redis::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    a.up(1);
    b.up(1);
    b.up(2);
    b.up(3);
    b.down(3); // its offline announcement is due on b
    redis.restart();
    // Each bus reconnects by itself; then its node restores its users.
    a.wait_up();
    b.wait_up();
    assert_eq!(online(&a), Vec::<u64>::new(), "Redis lost everything");
    wait(|d| a.presence.restore(&[1], true, d));
    wait(|d| b.presence.restore(&[1, 2], true, d));
    wait(|d| b.presence.restore(&[3], false, d));
    assert_eq!(online(&a), vec![1, 2]);
    assert!(!a.down(1), "b still holds 1");
    assert!(b.down(1), "restored per node, as before");
    assert_eq!(b.up(3), Up::Back, "3 is still announced online");
    assert!(b.down(3));
    assert_eq!(
        b.settle(&[1, 3]),
        vec![1, 3],
        "and announced offline when settled"
    );
}
