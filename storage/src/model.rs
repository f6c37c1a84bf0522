//! The data model every backend stores: identifiers, users, groups, messages, presence and the
//! notification outbox. Plain data only; no I/O.

use serde::{Deserialize, Serialize};

pub use corecast_ids::{
    GroupId, GroupIdError, IdGenerator, MessageId, Millis, NoticeId, UserId, GENERATORS,
    ID_EPOCH_MS,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub email: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    /// Sorted, without duplicates.
    pub members: Vec<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub url: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// A message as the gateway hands it to the store: id and timestamp already assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub id: MessageId,
    pub group: GroupId,
    pub sender: UserId,
    pub text: String,
    pub attachments: Vec<Attachment>,
    pub timestamp: Millis,
    /// The client's idempotency key; a second message with the same (group, sender, key) is
    /// not stored again (see [`crate::Request::AppendMessage`]).
    pub client_msg_id: Option<String>,
}

/// A message as stored, with the readers that marked it read (sorted). The sender is always
/// one of them: a message starts as read by its sender (see [`with_sender`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: MessageId,
    pub group: GroupId,
    pub sender: UserId,
    pub text: String,
    pub attachments: Vec<Attachment>,
    pub timestamp: Millis,
    pub client_msg_id: Option<String>,
    pub read_by: Vec<UserId>,
}

impl From<NewMessage> for StoredMessage {
    fn from(m: NewMessage) -> Self {
        StoredMessage {
            id: m.id,
            group: m.group,
            sender: m.sender,
            text: m.text,
            attachments: m.attachments,
            timestamp: m.timestamp,
            client_msg_id: m.client_msg_id,
            read_by: vec![m.sender],
        }
    }
}

/// The readers of a message from `sender`: `readers` (any order) with the sender added, sorted
/// and without duplicates. Backends store only the readers who marked the message read and
/// count its sender among them when they read it back, so no extra row is written per message
/// and messages stored before this rule read the same way.
pub fn with_sender(sender: UserId, mut readers: Vec<UserId>) -> Vec<UserId> {
    readers.push(sender);
    readers.sort();
    readers.dedup();
    readers
}

/// A read receipt as the group's stream holds it: event `id` (from the same sequence as the
/// group's message ids, so receipts and messages have one order) says `user` read `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadReceipt {
    pub id: MessageId,
    pub group: GroupId,
    pub message: MessageId,
    pub user: UserId,
}

/// One stored event of a group's stream, as connection state recovery replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    Message(StoredMessage),
    Read(ReadReceipt),
}

impl GroupEvent {
    /// The event's id: the message's, or the receipt's.
    pub fn id(&self) -> MessageId {
        match self {
            GroupEvent::Message(m) => m.id,
            GroupEvent::Read(r) => r.id,
        }
    }
}

/// A group's messages and receipts (each oldest first) as one stream, oldest first, at most
/// `limit` events: how the backends answer [`crate::Request::Since`].
pub fn merge_events(
    messages: Vec<StoredMessage>,
    reads: Vec<ReadReceipt>,
    limit: usize,
) -> Vec<GroupEvent> {
    let mut out = Vec::with_capacity((messages.len() + reads.len()).min(limit));
    let (mut messages, mut reads) = (
        messages.into_iter().peekable(),
        reads.into_iter().peekable(),
    );
    while out.len() < limit {
        let take_read = match (messages.peek(), reads.peek()) {
            (Some(m), Some(r)) => r.id < m.id,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        match if take_read {
            reads.next().map(GroupEvent::Read)
        } else {
            messages.next().map(GroupEvent::Message)
        } {
            Some(e) => out.push(e),
            None => break,
        }
    }
    out
}

/// The outcome of appending a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stored message: the new one, or on a duplicate `client_msg_id` the original.
    pub message: StoredMessage,
    /// True when the message was already stored under the same idempotency key; nothing was
    /// written and no notice was queued.
    pub duplicate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub online: bool,
    /// When the user was last seen connected (the last change of `online`).
    pub last_seen: Millis,
}

/// One pending email notice: `user` was offline when `message` reached `group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub id: NoticeId,
    pub user: UserId,
    pub group: GroupId,
    pub message: MessageId,
    pub created: Millis,
}

/// How a group's membership changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipChange {
    pub added: Vec<UserId>,
    pub removed: Vec<UserId>,
}

impl MembershipChange {
    /// The change from `before` (sorted, without duplicates) to `wanted` (any order); returns
    /// it with `wanted` sorted and deduplicated.
    pub fn between(before: &[UserId], wanted: &[UserId]) -> (MembershipChange, Vec<UserId>) {
        let mut wanted = wanted.to_vec();
        wanted.sort();
        wanted.dedup();
        let change = MembershipChange {
            added: wanted
                .iter()
                .filter(|u| before.binary_search(u).is_err())
                .copied()
                .collect(),
            removed: before
                .iter()
                .filter(|u| wanted.binary_search(u).is_err())
                .copied()
                .collect(),
        };
        (change, wanted)
    }
}

/// A UTC time split into calendar fields: (year, month, day, hour, minute, second, millisecond).
/// Howard Hinnant's days-to-civil algorithm; valid for every `Millis`.
pub fn utc_fields(ms: Millis) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, sod / 3600, sod % 3600 / 60, sod % 60, millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_fields_match_the_calendar() {
        assert_eq!(utc_fields(0), (1970, 1, 1, 0, 0, 0, 0));
        assert_eq!(utc_fields(951_782_400_000), (2000, 2, 29, 0, 0, 0, 0));
        assert_eq!(utc_fields(1_764_115_200_123), (2025, 11, 26, 0, 0, 0, 123));
        assert_eq!(utc_fields(-1), (1969, 12, 31, 23, 59, 59, 999));
    }

    #[test]
    fn membership_change_between_lists() {
        let (c, wanted) =
            MembershipChange::between(&[UserId(1), UserId(2)], &[UserId(3), UserId(2), UserId(3)]);
        assert_eq!(c.added, vec![UserId(3)]);
        assert_eq!(c.removed, vec![UserId(1)]);
        assert_eq!(wanted, vec![UserId(2), UserId(3)]);
    }

    #[test]
    fn the_sender_is_a_reader() {
        assert_eq!(with_sender(UserId(5), vec![]), vec![UserId(5)]);
        assert_eq!(
            with_sender(UserId(5), vec![UserId(9), UserId(5), UserId(2)]),
            vec![UserId(2), UserId(5), UserId(9)]
        );
    }
}
