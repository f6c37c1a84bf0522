//! [`Position`]: how far a connection has got in its groups' messages, which is what the
//! offset of connection state recovery says. Sans-IO.
//!
//! A connection receives each group's messages in id order, but the groups' streams
//! interleave in no global order (each group is ordered by its own owner), so one "last id"
//! cannot say what a client has seen. A position holds, for the groups with a message delivered
//! in the last [`WINDOW_MS`], the last id delivered (keyed by [`group_key`]), and a *floor* for
//! every other group: none of their messages after it was delivered, and every one up to it was
//! delivered or came before the session. A recovering client's missed messages are then, per
//! group, those after its listed id, or after the floor.
//!
//! A group drops out of the list when its last delivery is a window older than the newest
//! one, and the floor rises to that id. That is sound as long as no message is delivered more
//! than a window after its id was handed out (ids carry the millisecond they were made in;
//! a store answer takes milliseconds, and gives up long before a minute). The list holds at
//! most [`MAX_LISTED`] groups; past that the oldest drops out early in the same way.
//!
//! The offset is text: the floor, then `.key-id` per listed group, in base 36. At most about
//! 30 bytes per listed group.

use corecast_ids::{GroupId, MessageId};

/// How long a group stays listed after its last delivery (see the module's doc).
pub const WINDOW_MS: i64 = 60_000;
/// The most groups a position lists.
pub const MAX_LISTED: usize = 32;

/// A group's key in an offset: a fixed 64-bit hash of its id, so the offset stays short
/// whatever the group ids' length.
pub fn group_key(group: &GroupId) -> u64 {
    crate::fnv1a(group.as_str().as_bytes())
}

/// See the module's doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    floor: MessageId,
    /// (group key, last id delivered), in no order.
    listed: Vec<(u64, MessageId)>,
}

impl Position {
    /// A session's start: nothing delivered yet, nothing after `floor` seen.
    pub fn new(floor: MessageId) -> Position {
        Position {
            floor,
            listed: Vec::new(),
        }
    }

    /// Message `id` of the group keyed `key` was delivered.
    pub fn delivered(&mut self, key: u64, id: MessageId) {
        match self.listed.iter_mut().find(|(k, _)| *k == key) {
            Some((_, last)) => *last = (*last).max(id),
            None => self.listed.push((key, id)),
        }
        let cutoff = MessageId::new(id.millis() - WINDOW_MS, 0, 0);
        let mut floor = self.floor;
        self.listed.retain(|&(_, last)| {
            let keep = last >= cutoff;
            if !keep {
                floor = floor.max(last);
            }
            keep
        });
        while self.listed.len() > MAX_LISTED {
            let (i, &(_, oldest)) = self
                .listed
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, last))| *last)
                .expect("invariant: the list is not empty");
            floor = floor.max(oldest);
            self.listed.swap_remove(i);
        }
        self.floor = floor;
    }

    /// The id after which the group keyed `key` has messages the connection did not get.
    pub fn after(&self, key: u64) -> MessageId {
        self.listed
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(self.floor, |&(_, last)| last)
    }

    /// When the position was reached, near enough: the millisecond of its newest id.
    pub fn newest_ms(&self) -> i64 {
        self.listed
            .iter()
            .map(|&(_, id)| id)
            .fold(self.floor, MessageId::max)
            .millis()
    }

    /// Appends the offset text (see the module's doc).
    pub fn encode(&self, out: &mut Vec<u8>) {
        put36(out, self.floor.0);
        for &(key, id) in &self.listed {
            out.push(b'.');
            put36(out, key);
            out.push(b'-');
            put36(out, id.0);
        }
    }

    /// The position an offset says; `None` for text that is not one.
    pub fn decode(offset: &str) -> Option<Position> {
        let mut parts = offset.split('.');
        let floor = MessageId(parse36(parts.next()?)?);
        let mut listed = Vec::new();
        for part in parts {
            let (key, id) = part.split_once('-')?;
            if listed.len() == MAX_LISTED {
                return None;
            }
            listed.push((parse36(key)?, MessageId(parse36(id)?)));
        }
        Some(Position { floor, listed })
    }
}

const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Appends `n` in base 36 (digits and lower-case letters).
pub fn put36(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 13];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// A number [`put36`] wrote; `None` for anything else.
pub fn parse36(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 13 {
        return None;
    }
    let mut n: u64 = 0;
    for b in s.bytes() {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'z' => b - b'a' + 10,
            _ => return None,
        };
        n = n.checked_mul(36)?.checked_add(u64::from(d))?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_800_000_000_000;

    fn id(ms: i64, seq: u16) -> MessageId {
        MessageId::new(ms, 1, seq)
    }

    fn text(p: &Position) -> String {
        let mut out = Vec::new();
        p.encode(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_offset_round_trips_and_rejects_what_is_not_one() {
        let mut p = Position::new(id(MS, 0));
        assert_eq!(Position::decode(&text(&p)), Some(p.clone()));
        p.delivered(7, id(MS + 5, 1));
        p.delivered(u64::MAX, id(MS + 9, 2));
        let t = text(&p);
        assert_eq!(Position::decode(&t), Some(p.clone()));
        assert!(t.len() < 60, "{t}");
        for bad in [
            "",
            ".",
            "x.",
            "zzzzzzzzzzzzzz",
            "1.2",
            "1.2-",
            "1.-3",
            "1.2-3.",
            "A",
            "1 ",
        ] {
            assert_eq!(Position::decode(bad), None, "{bad:?}");
        }
        let too_many: String = std::iter::once("1".to_string())
            .chain((0..=MAX_LISTED).map(|k| format!("{k}-5")))
            .collect::<Vec<_>>()
            .join(".");
        assert_eq!(Position::decode(&too_many), None);
    }

    #[test]
    fn each_group_resumes_after_its_last_delivery_and_the_rest_after_the_floor() {
        let floor = id(MS, 0);
        let mut p = Position::new(floor);
        assert_eq!(p.after(1), floor, "nothing delivered: the session's start");
        p.delivered(1, id(MS + 10, 0));
        p.delivered(2, id(MS + 5, 0)); // another owner's clock: a smaller id arriving later
        p.delivered(1, id(MS + 20, 0));
        assert_eq!(p.after(1), id(MS + 20, 0));
        assert_eq!(p.after(2), id(MS + 5, 0));
        assert_eq!(p.after(3), floor);
        assert_eq!(p.newest_ms(), MS + 20);
    }

    #[test]
    fn a_group_quiet_for_a_window_drops_out_and_raises_the_floor() {
        let mut p = Position::new(id(MS, 0));
        p.delivered(1, id(MS + 1_000, 0));
        p.delivered(2, id(MS + 1_000 + WINDOW_MS, 0));
        assert_eq!(p.after(1), id(MS + 1_000, 0), "still inside the window");
        p.delivered(2, id(MS + 1_001 + WINDOW_MS, 0));
        assert_eq!(
            p.after(1),
            id(MS + 1_000, 0),
            "dropped: the floor is its last id"
        );
        assert_eq!(p.after(3), id(MS + 1_000, 0));
        assert_eq!(text(&p).matches('.').count(), 1, "one group listed");
    }

    #[test]
    fn past_the_cap_the_oldest_group_drops_out() {
        let mut p = Position::new(id(MS, 0));
        for k in 0..=MAX_LISTED as u64 {
            p.delivered(k, id(MS + 1 + k as i64, 0));
        }
        assert_eq!(text(&p).matches('.').count(), MAX_LISTED);
        assert_eq!(p.after(0), id(MS + 1, 0), "the floor took its id");
        assert_eq!(p.after(1), id(MS + 2, 0));
        assert_eq!(
            p.after(MAX_LISTED as u64),
            id(MS + 1 + MAX_LISTED as i64, 0)
        );
    }
}
