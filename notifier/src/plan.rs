//! Sans-IO decisions of the notifier: which pending notices form one email and when it is due,
//! which notices a member has seen since, and how long to wait before a retry. Pure functions
//! over plain data and `now`, so unit tests cover them without a store or an SMTP server.

use corecast_storage::{GroupId, Millis, Notice, NoticeId, Presence, UserId};
use std::collections::BTreeMap;
use std::time::Duration;

/// Most messages listed in one email; a longer burst continues in the next email.
pub const MAX_NOTICES_PER_EMAIL: usize = 50;

/// The notices that become one email: one member, one group, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub user: UserId,
    pub group: GroupId,
    pub notices: Vec<Notice>,
}

/// Identifies a batch across polls (for its retry state): the member, the group and the oldest
/// notice. The oldest notice of a (member, group) stays the same until that batch is done.
pub type BatchKey = (UserId, GroupId, NoticeId);

impl Batch {
    pub fn key(&self) -> BatchKey {
        (self.user, self.group.clone(), self.notices[0].id)
    }

    pub fn ids(&self) -> Vec<NoticeId> {
        self.notices.iter().map(|n| n.id).collect()
    }
}

/// The email's Message-ID. It depends only on which notices the email carries, so an email sent
/// again after a crash (SMTP accepted, notices not yet deleted) carries the same Message-ID and
/// mail systems and readers can recognise the duplicate.
///
/// The group id appears percent-encoded (every byte but ASCII letters, digits, `-` and `_`), so
/// that spaces, `<`, `>`, `@` or unicode in it keep the header valid (RFC 5322 `dot-atom`), and
/// is cut after [`MESSAGE_ID_GROUP_CHARS`] characters: it is there for people reading headers,
/// while the notice ids (unique in the store) make the Message-ID unique.
pub fn message_id(user: UserId, group: &GroupId, ids: &[NoticeId]) -> String {
    let min = ids.iter().min().map_or(0, |i| i.0);
    let max = ids.iter().max().map_or(0, |i| i.0);
    let mut g = String::new();
    for &b in group.as_str().as_bytes() {
        let piece = if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            (b as char).to_string()
        } else {
            format!("%{b:02X}")
        };
        if g.len() + piece.len() > MESSAGE_ID_GROUP_CHARS {
            break;
        }
        g.push_str(&piece);
    }
    format!("<notice-{user}-{g}-{min}-{max}@corecast>")
}

/// Most characters of the encoded group id in a Message-ID (see [`message_id`]).
pub const MESSAGE_ID_GROUP_CHARS: usize = 64;

/// Splits `pending` (oldest first, as the store returns them) into the batches that are due at
/// `now`.
///
/// A (member, group) pair is due when its oldest notice is at least `window_ms` old. Its batch is
/// that notice and every later one of the pair created within `window_ms` of it (at most
/// [`MAX_NOTICES_PER_EMAIL`]). Cutting by creation time rather than by "all pending now" makes a
/// batch the same set of notices however often it is recomputed, including after a restart,
/// which keeps the Message-ID stable; notices after the window start the pair's next batch.
///
/// `truncated` says the store had more pending notices than it returned: a batch whose window
/// may reach past the last returned notice could be incomplete, so it waits for a later poll
/// (unless it is already full).
pub fn due_batches(pending: &[Notice], truncated: bool, now: Millis, window_ms: i64) -> Vec<Batch> {
    let last_seen_created = pending.last().map(|n| n.created);
    let mut pairs: BTreeMap<(UserId, GroupId), Vec<Notice>> = BTreeMap::new();
    for n in pending {
        pairs
            .entry((n.user, n.group.clone()))
            .or_default()
            .push(n.clone());
    }
    let mut out = Vec::new();
    for ((user, group), mut notices) in pairs {
        notices.sort_by_key(|n| n.id);
        let first = notices[0].created;
        let window_end = first.saturating_add(window_ms);
        if now < window_end {
            continue;
        }
        let batch: Vec<Notice> = notices
            .into_iter()
            .filter(|n| n.created <= window_end)
            .take(MAX_NOTICES_PER_EMAIL)
            .collect();
        let full = batch.len() == MAX_NOTICES_PER_EMAIL;
        if truncated && !full && last_seen_created.is_some_and(|last| last <= window_end) {
            continue;
        }
        out.push(Batch {
            user,
            group,
            notices: batch,
        });
    }
    // Oldest first, so that a backlog drains in the order the messages were written.
    out.sort_by_key(|b| b.notices[0].id);
    out
}

/// Splits a batch's notices into (seen, unseen) given the member's presence now.
///
/// The gateway writes a notice only for a member with no live connection, so a member who is
/// online now, or who went offline after a notice was written, has connected since that message
/// was stored and could read it in the app: those notices need no email.
pub fn split_seen(notices: &[Notice], presence: Option<Presence>) -> (Vec<Notice>, Vec<Notice>) {
    match presence {
        Some(p) if p.online => (notices.to_vec(), Vec::new()),
        Some(p) => notices
            .iter()
            .cloned()
            .partition(|n| n.created < p.last_seen),
        None => (Vec::new(), notices.to_vec()),
    }
}

/// Delay before retry number `attempt` (0 for the first retry): exponential from `initial`,
/// capped at `max`, with jitter drawn from `rand01` in [0, 1) that spreads retries over the
/// upper half of the delay so that many batches do not retry in lockstep.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, rand01: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(31));
    let d = initial.saturating_mul(factor).min(max);
    d / 2 + d.mul_f64(rand01.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(id: u64, user: u64, group: u64, created: Millis) -> Notice {
        Notice {
            id: NoticeId(id),
            user: UserId(user),
            group: GroupId::new(group.to_string()),
            message: corecast_storage::MessageId(id * 10),
            created,
        }
    }

    #[test]
    fn a_burst_within_the_window_becomes_one_batch_once_its_oldest_is_old_enough() {
        let pending = vec![
            notice(1, 7, 1, 1_000),
            notice(2, 7, 1, 1_500),
            notice(3, 8, 1, 1_500),
            notice(4, 7, 1, 2_900),
        ];
        assert!(due_batches(&pending, false, 2_999, 2_000).is_empty());
        let due = due_batches(&pending, false, 3_000, 2_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].ids(), vec![NoticeId(1), NoticeId(2), NoticeId(4)]);
        let due = due_batches(&pending, false, 3_500, 2_000);
        assert_eq!(due.len(), 2);
        assert_eq!(due[1].user, UserId(8));
    }

    #[test]
    fn notices_after_the_window_wait_for_the_next_batch_so_batches_are_stable() {
        let pending = vec![notice(1, 7, 1, 1_000), notice(2, 7, 1, 5_000)];
        let due = due_batches(&pending, false, 10_000, 2_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].ids(), vec![NoticeId(1)]);
        assert_eq!(
            message_id(UserId(7), &GroupId::new("1"), &due[0].ids()),
            "<notice-7-1-1-1@corecast>"
        );
    }

    #[test]
    fn message_ids_stay_valid_headers_whatever_the_group_id() {
        let id = |g: &str| message_id(UserId(7), &GroupId::new(g), &[NoticeId(3), NoticeId(9)]);
        assert_eq!(id("team-berlin"), "<notice-7-team-berlin-3-9@corecast>");
        assert_eq!(id("007"), "<notice-7-007-3-9@corecast>");
        assert_eq!(
            id("team berlin <x@y>"),
            "<notice-7-team%20berlin%20%3Cx%40y%3E-3-9@corecast>"
        );
        assert_eq!(id("Zürich"), "<notice-7-Z%C3%BCrich-3-9@corecast>");
        let long = id(&"☕".repeat(40));
        // 64 characters of the group: seven whole characters of nine bytes each, none cut.
        assert_eq!(
            long,
            format!("<notice-7-{}-3-9@corecast>", "%E2%98%95".repeat(7))
        );
        let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.@<>".contains(c);
        assert!(long.chars().all(atext));
    }

    #[test]
    fn a_truncated_read_holds_back_batches_that_may_continue_beyond_it() {
        let pending = vec![notice(1, 7, 1, 1_000), notice(2, 8, 1, 1_100)];
        assert!(due_batches(&pending, true, 10_000, 2_000).is_empty());
        let pending = vec![notice(1, 7, 1, 1_000), notice(2, 8, 1, 9_000)];
        assert_eq!(due_batches(&pending, true, 20_000, 2_000).len(), 1);
    }

    #[test]
    fn big_bursts_are_split_into_full_emails() {
        let pending: Vec<Notice> = (1..=120).map(|i| notice(i, 7, 1, 1_000)).collect();
        let due = due_batches(&pending, true, 10_000, 2_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].notices.len(), MAX_NOTICES_PER_EMAIL);
    }

    #[test]
    fn online_members_have_seen_everything_and_returning_members_what_came_before() {
        let ns = vec![notice(1, 7, 1, 1_000), notice(2, 7, 1, 3_000)];
        let (seen, unseen) = split_seen(
            &ns,
            Some(Presence {
                online: true,
                last_seen: 0,
            }),
        );
        assert_eq!((seen.len(), unseen.len()), (2, 0));
        let (seen, unseen) = split_seen(
            &ns,
            Some(Presence {
                online: false,
                last_seen: 2_000,
            }),
        );
        assert_eq!((seen[0].id, unseen[0].id), (NoticeId(1), NoticeId(2)));
        let (seen, unseen) = split_seen(&ns, None);
        assert_eq!((seen.len(), unseen.len()), (0, 2));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let (i, m) = (Duration::from_millis(100), Duration::from_millis(1_000));
        assert_eq!(backoff(0, i, m, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(0, i, m, 0.999_999).as_millis(), 99);
        assert_eq!(backoff(2, i, m, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(10, i, m, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(u32::MAX, i, m, 0.0), Duration::from_millis(500));
    }
}
