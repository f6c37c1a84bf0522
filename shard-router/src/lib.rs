//! Who owns what, and how shards talk.
//!
//! - [`owner_of_group`] and [`owner_of_user`]: the one pure routing function per kind of state.
//!   A group's room (its member list, its subscriber shards, the order of its messages) lives on
//!   the group's owner shard; a user's presence count lives on the user's owner shard.
//! - [`mesh`]: one bounded, lock-free inbox per shard (crossbeam-channel), with a doorbell so
//!   that a shard waiting for work sleeps in its reactor and is woken by the sender, never by
//!   spinning.
//! - [`RateLimiter`]: a sans-IO token bucket.
//!
//! Nothing here does I/O or knows about sockets; it never blocks.

mod limiter;
pub mod mesh;

pub use corecast_storage::{GroupId, UserId};
pub use limiter::RateLimiter;
pub use mesh::{mesh, Inbox, InboxHandle};

/// A shard: one executor pinned to one core, owning its connections and its share of rooms
/// and presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl ShardId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard-{}", self.0)
    }
}

/// A 64-bit mix (splitmix64's finalizer) so that consecutive ids spread evenly over shards.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The shard that owns a group's room. Pure: every shard computes the same answer.
pub fn owner_of_group(group: GroupId, nr_shards: usize) -> ShardId {
    ShardId((mix(group.0) % nr_shards.max(1) as u64) as u16)
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
        let n = 4;
        let mut counts = [0usize; 4];
        for g in 0..4000 {
            let s = owner_of_group(GroupId(g), n);
            assert_eq!(s, owner_of_group(GroupId(g), n));
            counts[s.index()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(owner_of_user(UserId(7), 1), ShardId(0));
    }
}
