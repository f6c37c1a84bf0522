//! The shared message limit against a real Redis (see common/mod.rs): two nodes draw on one
//! bucket per user, a refusal says when to retry, and other users are not affected.

mod common;

use common::{Redis, WAIT};
use corecast_cluster::bus::Done;
use corecast_cluster::{Bus, ClusterLimit};

fn node(redis: &Redis) -> (Bus, ClusterLimit) {
    let (bus, _) = common::bus_up(redis);
    let limit = ClusterLimit::new(bus.handle(), "t:");
    (bus, limit)
}

fn take(limit: &ClusterLimit, user: u64, per_min: u32) -> Option<u64> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let done: Done<Option<u64>> = Box::new(move |r| {
        let _ = tx.send(r);
    });
    limit.take(user, per_min, done);
    rx.recv_timeout(WAIT)
        .expect("an answer")
        .expect("Redis took it")
}

#[test]
fn two_nodes_draw_on_one_budget_per_user() {
    let redis = Redis::start();
    let ((_a_bus, a), (_b_bus, b)) = (node(&redis), node(&redis));
    // 6 a minute: a burst of 6, taken alternately from both nodes, then refused.
    for i in 0..6 {
        let n = if i % 2 == 0 { &a } else { &b };
        assert_eq!(take(n, 7, 6), None, "token {i}");
    }
    let wait = take(&a, 7, 6).expect("the seventh is refused");
    assert!(
        (1..=10_000).contains(&wait),
        "a token every 10 s: retry in {wait} ms"
    );
    assert!(take(&b, 7, 6).is_some(), "on the other node too");
    assert_eq!(
        take(&b, 8, 6),
        None,
        "another user has a budget of their own"
    );
}
