//! The identifiers every part of corecast shares: users, groups, messages, notices and
//! shards, and the generator of message ids. Plain data, no I/O, so that the store, the room
//! core (shard-router) and the gateway depend on it, not on each other.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_newtype!(
    /// A user, as named by the JWT `sub` claim.
    UserId
);
id_newtype!(
    /// A message id: unique and time-ordered (see [`MessageId::new`]). Travels as a decimal
    /// string on the wire because JavaScript numbers cannot hold 64 bits.
    MessageId
);
id_newtype!(
    /// One entry of the notification outbox.
    NoticeId
);

/// A group chat; each has one room on its owner shard. The id is a string, as the Socket.IO
/// room names of the Node.js app that corecast replaces are: 1 to [`GroupId::MAX_BYTES`] bytes
/// of UTF-8 (configurable up to [`GroupId::LIMIT_BYTES`]) without control characters, compared
/// and echoed byte for byte (`"007"` and `"7"` are two groups).
///
/// An `Arc<str>`: it travels in every message between shards and sits in every room's map, so a
/// clone is a reference count, not a copy. Its `Hash` is std's (for in-process maps only); the
/// owner of a group is decided by `corecast_shard_router::owner_of_group`, a fixed hash of the
/// bytes that every process and version agrees on.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(Arc<str>);

/// Why a string is not a group id (see [`GroupId::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupIdError {
    #[error("groupId must not be empty")]
    Empty,
    #[error("groupId is {len} bytes; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("groupId must not contain control characters (U+{code:04X} at byte {at})")]
    Control { code: u32, at: usize },
}

impl GroupId {
    /// The default longest group id, in bytes of UTF-8.
    pub const MAX_BYTES: usize = 128;
    /// The most that the limit may be configured to: a group id is part of every message's key
    /// in both stores and of admin URLs, so it stays small.
    pub const LIMIT_BYTES: usize = 1024;

    /// Checks `s` against the rules (1 to `max_bytes` bytes, no control characters) and makes
    /// it a group id. For input from clients and operators.
    pub fn parse(s: &str, max_bytes: usize) -> Result<GroupId, GroupIdError> {
        if s.is_empty() {
            return Err(GroupIdError::Empty);
        }
        if s.len() > max_bytes {
            return Err(GroupIdError::TooLong {
                len: s.len(),
                max: max_bytes,
            });
        }
        if let Some((at, c)) = s.char_indices().find(|(_, c)| c.is_control()) {
            return Err(GroupIdError::Control { code: c as u32, at });
        }
        Ok(GroupId(Arc::from(s)))
    }

    /// A group id without checks: for ids read back from a store (checked when they were first
    /// written) and for tests.
    pub fn new(s: impl Into<Arc<str>>) -> GroupId {
        GroupId(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A JSON string (unchecked on the way in, like [`GroupId::new`]: input from clients and
/// operators goes through [`GroupId::parse`]).
impl Serialize for GroupId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for GroupId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(GroupId::new)
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({:?})", &*self.0)
    }
}

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// Ids count milliseconds from this epoch (2024-01-01T00:00:00Z) so 42 bits last until 2163.
pub const ID_EPOCH_MS: i64 = 1_704_067_200_000;
/// Bits of a [`MessageId`] below the timestamp: 12 for the generator (a shard of a node), 10
/// for a per-millisecond sequence. (Until 2026-12 they were 8 and 14: the timestamp has kept
/// its place, so ids minted before and after still sort by time.)
const GEN_BITS: u32 = 12;
const SEQ_BITS: u32 = 10;
/// How many generators can mint ids at once: every shard of every node needs its own (a
/// node's shards use one block of them; in a cluster the block is claimed in Redis).
pub const GENERATORS: u16 = 1 << GEN_BITS;

impl MessageId {
    /// Composes an id from its parts. `generator` tells generators apart (one per shard), so
    /// two shards never produce the same id; `seq` orders ids within one millisecond.
    pub fn new(ms: Millis, generator: u16, seq: u16) -> MessageId {
        let t = (ms - ID_EPOCH_MS).max(0) as u64;
        MessageId(
            (t << (GEN_BITS + SEQ_BITS))
                | ((generator as u64 & (GENERATORS as u64 - 1)) << SEQ_BITS)
                | (seq as u64 & ((1 << SEQ_BITS) - 1)),
        )
    }

    /// The millisecond the id was minted in.
    pub fn millis(self) -> Millis {
        (self.0 >> (GEN_BITS + SEQ_BITS)) as i64 + ID_EPOCH_MS
    }
}

/// Hands out strictly increasing [`MessageId`]s for one generator (one shard). Not shared between
/// threads: each shard owns one.
#[derive(Debug)]
pub struct IdGenerator {
    generator: u16,
    last: u64,
}

impl IdGenerator {
    /// The generator numbered `generator` (below [`GENERATORS`]).
    pub fn new(generator: u16) -> Self {
        IdGenerator { generator, last: 0 }
    }

    /// Makes every later id greater than `id` (minted by another generator: a group's
    /// previous owner node), and of this generator still.
    pub fn after(&mut self, id: MessageId) {
        let floor = MessageId::new(id.millis() + 1, self.generator, 0).0 - 1;
        self.last = self.last.max(floor);
    }

    /// The next id at time `now`. Strictly greater than every id this generator returned before,
    /// even if the clock steps back or more than 1,024 ids are minted in one millisecond (the
    /// id then borrows from the next millisecond).
    pub fn next(&mut self, now: Millis) -> MessageId {
        let candidate = MessageId::new(now, self.generator, 0).0;
        let id = if candidate > self.last {
            candidate
        } else {
            // Same (or earlier) millisecond: bump the sequence, carrying into the timestamp.
            let seq_mask = (1u64 << SEQ_BITS) - 1;
            let next = self.last + 1;
            if next & seq_mask == 0 {
                // Sequence overflowed into the generator bits: move to the next millisecond.
                let t = (self.last >> (GEN_BITS + SEQ_BITS)) + 1;
                (t << (GEN_BITS + SEQ_BITS))
                    | ((self.generator as u64 & (GENERATORS as u64 - 1)) << SEQ_BITS)
            } else {
                next
            }
        };
        self.last = id;
        MessageId(id)
    }
}

/// A shard: one executor pinned to one core, owning its connections and its share of rooms
/// and presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl ShardId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard-{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_even_within_one_millisecond_and_when_the_clock_steps_back() {
        let mut gen = IdGenerator::new(3);
        let now = ID_EPOCH_MS + 1_000;
        let mut last = gen.next(now);
        for _ in 0..40_000 {
            let id = gen.next(now);
            assert!(id > last);
            last = id;
        }
        let id = gen.next(now - 500);
        assert!(id > last);
    }

    #[test]
    fn group_ids_are_strings_of_1_to_max_bytes_without_control_characters() {
        for ok in [
            "team-berlin",
            "team berlin",
            "007",
            "7",
            "Zürich ☕",
            "65f1c0de4a2b",
            "a/b?c",
        ] {
            assert_eq!(GroupId::parse(ok, 128).unwrap().as_str(), ok);
        }
        assert_ne!(GroupId::parse("007", 128), GroupId::parse("7", 128));
        assert_eq!(GroupId::parse("", 128), Err(GroupIdError::Empty));
        assert!(GroupId::parse(&"x".repeat(128), 128).is_ok());
        assert_eq!(
            GroupId::parse(&"x".repeat(129), 128),
            Err(GroupIdError::TooLong { len: 129, max: 128 })
        );
        // Bytes, not characters: 43 three-byte characters are 129 bytes.
        assert!(GroupId::parse(&"☕".repeat(42), 128).is_ok());
        assert!(GroupId::parse(&"☕".repeat(43), 128).is_err());
        assert_eq!(
            GroupId::parse("a\nb", 128),
            Err(GroupIdError::Control { code: 0x0a, at: 1 })
        );
        assert!(GroupId::parse("\u{0}", 128).is_err());
        assert!(GroupId::parse("x\u{7f}", 128).is_err());
        assert!(GroupId::parse("x\u{9b}", 128).is_err());
        assert_eq!(
            GroupIdError::TooLong { len: 129, max: 128 }.to_string(),
            "groupId is 129 bytes; the limit is 128"
        );
        let g = GroupId::new("team berlin");
        assert_eq!(g.to_string(), "team berlin");
        assert_eq!(serde_json::to_string(&g).unwrap(), "\"team berlin\"");
    }

    #[test]
    fn generators_never_collide_and_ids_keep_their_millisecond() {
        let now = ID_EPOCH_MS + 123_456;
        let a = IdGenerator::new(1).next(now);
        let b = IdGenerator::new(2).next(now);
        assert_ne!(a, b);
        assert_eq!(a.millis(), now);
        let mut later = IdGenerator::new(5);
        later.after(MessageId::new(now + 7, 9, 3));
        let id = later.next(now);
        assert!(
            id > MessageId::new(now + 7, 9, 1023),
            "after another generator's id"
        );
        assert_eq!(
            id.0 >> SEQ_BITS & (GENERATORS as u64 - 1),
            5,
            "still generator 5"
        );
        let last = IdGenerator::new(GENERATORS - 1).next(now);
        assert_ne!(last, IdGenerator::new(0).next(now));
        assert_eq!(
            last.millis(),
            now,
            "the generator stays out of the timestamp"
        );
    }
}
