//! Who owns what, and how shards talk.
//!
//! - [`owner_of_group`] and [`owner_of_user`]: the one pure routing function per kind of state.
//!   A group's room (its member list, its subscriber shards, the order of its messages) lives on
//!   the group's owner shard; a user's presence count lives on the user's owner shard.
//! - [`mesh`]: one bounded, lock-free inbox per shard (crossbeam-channel), with a doorbell so
//!   that a shard waiting for work sleeps in its reactor and is woken by the sender, never by
//!   spinning.
//! - [`RateLimiter`]: a sans-IO token bucket per key ([`Rate`]: per minute or per second with
//!   a burst).
//! - [`Presence`]: the debounced presence of the users a shard owns, sans-IO.
//! - [`Recent`]: a bounded set of keys that expire (the groups known not to exist).
//! - [`Loads`]: the membership loads of connects, merged (one in flight per shard).
//! - [`Room`]: one group's room on its owner shard, sans-IO: members, subscribers per place,
//!   the id order of its messages, merged resends, the barrier of membership changes.
//! - [`Subscriptions`]: one connection's rooms as its shard sees them, and the CONNECT barrier.
//!
//! Nothing here does I/O or knows about sockets; it never blocks.

mod limiter;
mod loads;
pub mod mesh;
pub mod position;
pub mod presence;
mod recent;
pub mod room;
pub mod subs;

pub use corecast_ids::{GroupId, MessageId, ShardId, UserId};
pub use limiter::{Rate, RateLimiter};
pub use loads::Loads;
pub use mesh::{mesh, Inbox, InboxHandle};
pub use position::Position;
pub use presence::Presence;
pub use recent::Recent;
pub use room::Room;
pub use subs::Subscriptions;

/// A 64-bit mix (splitmix64's finalizer) so that consecutive ids spread evenly over shards.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a (64-bit) of `bytes`: a fixed function of the bytes alone, unlike std's hashers,
/// whose keys are random per process and whose algorithm may change between Rust versions.
/// Every process, version and (later) gateway node computes the same value.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard that owns a group's room. Pure and stable: a hash of the id's bytes ([`fnv1a`],
/// then [`mix`] so that ids differing only in their last character, `team-1`, `team-2`, spread
/// over every shard count), so every shard, process and gateway node computes the same answer.
pub fn owner_of_group(group: &GroupId, nr_shards: usize) -> ShardId {
    ShardId((mix(fnv1a(group.as_str().as_bytes())) % nr_shards.max(1) as u64) as u16)
}

/// The node that owns a group in a cluster, among the `nodes` alive (cluster mode): the one
/// with the highest score of the pair (node, group), rendezvous hashing, so that every node
/// that sees the same live set agrees, and a node joining or leaving moves only the groups it
/// takes or had. Inside the owner node the room lives on [`owner_of_group`]'s shard. `None`
/// when `nodes` is empty. Pure and fixed across versions, as [`owner_of_group`] is.
pub fn owner_node_of_group<'a, N: AsRef<str>>(group: &GroupId, nodes: &'a [N]) -> Option<&'a N> {
    let g = mix(fnv1a(group.as_str().as_bytes()));
    let score = |n: &N| mix(fnv1a(n.as_ref().as_bytes()) ^ g);
    nodes.iter().max_by(|a, b| {
        score(a)
            .cmp(&score(b))
            .then_with(|| a.as_ref().cmp(b.as_ref()))
    })
}

/// The shard that owns a user's presence count.
pub fn owner_of_user(user: UserId, nr_shards: usize) -> ShardId {
    // A different salt from groups, so a user and a group with the same number need not share.
    ShardId((mix(user.0 ^ 0x5555_5555_5555_5555) % nr_shards.max(1) as u64) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_stable_and_spread() {
        for n in [2usize, 3, 4, 7] {
            let mut counts = vec![0usize; n];
            for g in 0..4000 {
                let id = GroupId::new(format!("team-{g}"));
                let s = owner_of_group(&id, n);
                assert_eq!(s, owner_of_group(&GroupId::new(id.to_string()), n));
                counts[s.index()] += 1;
            }
            let fair = 4000 / n;
            assert!(counts.iter().all(|&c| c > fair * 8 / 10), "{n}: {counts:?}");
        }
        assert_eq!(owner_of_user(UserId(7), 1), ShardId(0));
        assert_eq!(owner_of_group(&GroupId::new("x"), 1), ShardId(0));
        assert_eq!(owner_of_group(&GroupId::new("x"), 0), ShardId(0));
    }

    /// The owner of a group must never change between processes, builds or versions (nodes of
    /// a cluster must agree, and a rolling upgrade runs two versions side by side): these values
    /// are pinned. FNV-1a's published test vectors, then owners computed once.
    #[test]
    fn owners_are_pinned_across_versions() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        let owners: Vec<u16> = ["team-berlin", "team berlin", "007", "7", "Zürich ☕"]
            .iter()
            .map(|g| owner_of_group(&GroupId::new(*g), 16).0)
            .collect();
        assert_eq!(owners, PINNED_OWNERS_OF_16);
    }

    #[test]
    fn owner_nodes_agree_spread_and_move_only_what_a_leaving_node_had() {
        let three = ["node-a", "node-b", "node-c"];
        let two = ["node-a", "node-c"];
        let mut counts = [0usize; 3];
        for g in 0..3000 {
            let id = GroupId::new(format!("team-{g}"));
            let owner = owner_node_of_group(&id, &three).unwrap();
            let mut reversed = three;
            reversed.reverse();
            assert_eq!(
                owner,
                owner_node_of_group(&id, &reversed).unwrap(),
                "order-free"
            );
            counts[three.iter().position(|n| n == owner).unwrap()] += 1;
            let after = owner_node_of_group(&id, &two).unwrap();
            if *owner != "node-b" {
                assert_eq!(owner, after, "only node-b's groups move");
            }
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert!(owner_node_of_group::<&str>(&GroupId::new("x"), &[]).is_none());
    }

    // Computed by an independent implementation (Python) of the same two functions.
    const PINNED_OWNERS_OF_16: [u16; 5] = [1, 1, 15, 7, 3];
}
