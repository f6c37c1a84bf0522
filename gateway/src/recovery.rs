//! Connection state recovery, served from the store (docs/protocol.md, "Reconnecting").
//!
//! socket.io-client (4.6 and later) keeps the `pid` a server gives in its CONNECT answer and the
//! offset it sends as the last argument of each event, and sends both back in the CONNECT of
//! its next session. corecast answers a recovering CONNECT only after writing, from the store,
//! every message of the user's groups that the client missed, in each group's order; the
//! client then has `socket.recovered === true`.
//!
//! - **pid** ([`PidKey`]): `<start>.<nonce>.<mac>`, the session's start (milliseconds, base
//!   36), a random nonce, and an HMAC-SHA256 over the user, start and nonce. A pid is only
//!   good for the user it was made for: another user's, or a forged one, gets a fresh session.
//! - **offset**: a [`Position`] (shard-router), per connection: the last id delivered per
//!   recently active group and a floor for the rest. Each event's frame is encoded once; each
//!   recipient gets a copy with its own offset appended (`wire::packet::with_offset`).
//! - **replay**: while the CONNECT waits for its subscriptions, each room's owner answers with
//!   its settled id (`Room::settled`): the store holds every message up to it, and every later
//!   one will be delivered. The connection reads the store from its position to each settled
//!   id ([`Replay`]) and holds back live deliveries until the CONNECT is answered; then it
//!   writes the replayed messages, then the held ones.
//!
//! Clients that cannot recover get no offset and no pid, so that handlers written for the
//! event's own arguments keep working: python-socketio calls a handler with every argument.
//! It is recognised by its Engine.IO handshake, whose `t` is seconds with a fraction
//! (`t=1764750000.123`); socket.io-client's is a short random word ([`takes_offsets`]).

use bytes::Bytes;
use corecast_shard_router::position::{group_key, parse36, put36};
use corecast_shard_router::Position;
use corecast_storage::{GroupEvent, GroupId, MessageId, UserId};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Whether the client whose Engine.IO handshake had `query` keeps offsets (see the module's
/// doc): every client but python-engineio's.
pub fn takes_offsets(query: &str) -> bool {
    !query
        .split('&')
        .any(|kv| kv.strip_prefix("t=").is_some_and(|t| t.contains('.')))
}

/// Makes and checks session ids (pid). The key is the operator's `CORECAST_RECOVERY_SECRET`,
/// else the HS256 JWT secret, else random per process.
pub struct PidKey {
    key: Vec<u8>,
}

const MAC_BYTES: usize = 16;

impl PidKey {
    pub fn new(key: &[u8]) -> PidKey {
        PidKey { key: key.to_vec() }
    }

    /// The key `config` names (see the type's doc).
    pub fn from_config(config: &crate::config::Config) -> PidKey {
        use crate::config::JwtAlgorithm;
        if let Some(s) = &config.recovery.secret {
            return PidKey::new(s.as_bytes());
        }
        if config.auth.jwt_algorithm == JwtAlgorithm::HS256 {
            return PidKey::new(config.jwt_secret().0.as_bytes());
        }
        if config.recovery.enabled {
            tracing::warn!(
                "no CORECAST_RECOVERY_SECRET and no HS256 secret: session ids are signed with a \
                 random key, so connection state recovery does not survive a restart"
            );
        }
        PidKey::random()
    }

    /// A random key: pids do not outlive the process.
    pub fn random() -> PidKey {
        PidKey {
            key: (0..32).map(|_| fastrand::u8(..)).collect(),
        }
    }

    fn mac(&self, user: UserId, start_ms: u64, nonce: u64) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("invariant: HMAC takes any key");
        mac.update(b"corecast pid v1\0");
        mac.update(&user.0.to_be_bytes());
        mac.update(&start_ms.to_be_bytes());
        mac.update(&nonce.to_be_bytes());
        mac
    }

    /// `user`'s pid for `session`: the same text each time.
    pub fn pid(&self, user: UserId, session: Session) -> String {
        let tag = self
            .mac(user, session.start_ms, session.nonce)
            .finalize()
            .into_bytes();
        let mut pid = format!("{}.{}.", base36(session.start_ms), base36(session.nonce));
        for b in &tag[..MAC_BYTES] {
            pid.push_str(&format!("{b:02x}"));
        }
        pid
    }

    /// A new pid for `user`'s session started at `start_ms`.
    pub fn mint(&self, user: UserId, start_ms: u64) -> String {
        self.pid(user, Session::new(start_ms))
    }

    /// The session `pid` names if it is one of ours for `user`.
    pub fn verify(&self, pid: &str, user: UserId) -> Option<Session> {
        let mut parts = pid.split('.');
        let start = parse36(parts.next()?)?;
        let nonce = parse36(parts.next()?)?;
        let tag = parts.next()?;
        if parts.next().is_some() || tag.len() != 2 * MAC_BYTES {
            return None;
        }
        let tag: Vec<u8> = (0..MAC_BYTES)
            .map(|i| u8::from_str_radix(tag.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        self.mac(user, start, nonce)
            .verify_truncated_left(&tag)
            .ok()
            .map(|()| Session {
                start_ms: start,
                nonce,
            })
    }
}

/// What a pid names: a session's start and its nonce (the pid's text is made from these and
/// the user when it is written, so a connection holds 16 bytes, not the text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub start_ms: u64,
    nonce: u64,
}

impl Session {
    pub fn new(start_ms: u64) -> Session {
        Session {
            start_ms,
            nonce: fastrand::u64(..),
        }
    }
}

fn base36(n: u64) -> String {
    let mut out = Vec::new();
    put36(&mut out, n);
    String::from_utf8(out).expect("invariant: base 36 is ASCII")
}

/// What a delivery is, for the offset: an event of the group's stored stream (a message or
/// a read receipt, by its id), or an event that is not stored (`userOnline`), which carries
/// no offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Stored(MessageId),
    Unstored,
}

/// A connection's recovery state: its session (what its pid names), its position, and, while
/// a recovering CONNECT waits, the replay.
pub struct Recovery {
    pub session: Session,
    pub position: Position,
    /// `Some` from a recovering CONNECT until it is answered.
    pub replay: Option<Box<Replay>>,
}

/// A recovering CONNECT's replay (see the module's doc).
#[derive(Default)]
pub struct Replay {
    /// Each subscribed group's settled id, as its owner answered.
    pub settled: Vec<(GroupId, MessageId)>,
    /// Store reads not answered yet.
    pub reads_left: usize,
    /// When the client's position was reached (wall milliseconds): presence announced since
    /// then is news to it ([`PresenceLog`]).
    pub since_ms: i64,
    /// Which recovering CONNECT of the connection this is: an answer to an earlier one's read
    /// (the client left the namespace and came back meanwhile) is ignored.
    pub attempt: u32,
    /// What the store returned (messages and read receipts), per group, oldest first; `None`
    /// once recovery is given up (a read failed, or more than the limit was missed).
    pub missed: Option<Vec<GroupEvent>>,
    /// About how many bytes the missed events take as frames (see `Conn::replayed`).
    pub missed_bytes: usize,
    /// Live deliveries held back until the CONNECT is answered, and their bytes.
    pub held: Vec<(GroupId, Event, Bytes)>,
    pub held_bytes: usize,
}

impl Recovery {
    /// A fresh session at `now_ms`: a new pid, nothing delivered.
    pub fn fresh(now_ms: u64) -> Recovery {
        Recovery {
            session: Session::new(now_ms),
            position: Position::new(session_floor(now_ms)),
            replay: None,
        }
    }

    /// The recovery a CONNECT with `pid` and `offset` asks for, if it may have it: a pid of
    /// this user's, an offset that parses (or none: the client had received nothing), and a
    /// position younger than `max_age_ms`.
    pub fn resume(
        key: &PidKey,
        user: UserId,
        pid: &str,
        offset: Option<&str>,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Option<Recovery> {
        let session = key.verify(pid, user)?;
        let start = session.start_ms;
        let position = match offset {
            Some(o) => Position::decode(o)?,
            None => Position::new(session_floor(start)),
        };
        let since_ms = position.newest_ms();
        let age = (now_ms as i64).saturating_sub(since_ms);
        if age > max_age_ms as i64 || start > now_ms {
            return None;
        }
        Some(Recovery {
            session,
            position,
            replay: Some(Box::new(Replay {
                attempt: next_attempt(),
                since_ms,
                ..Replay::default()
            })),
        })
    }

    /// The id after which `group` has messages this connection has not had.
    pub fn after(&self, group: &GroupId) -> MessageId {
        self.position.after(group_key(group))
    }

    /// `frame`, a delivery of `event` in `group`, as this connection gets it: with its offset
    /// appended (stored events), as is (`userOnline`), or `None` for a message it already has.
    pub fn frame_for(&mut self, group: &GroupId, event: Event, frame: &Bytes) -> Option<Bytes> {
        match event {
            Event::Unstored => return Some(frame.clone()),
            Event::Stored(id) => {
                let key = group_key(group);
                if id <= self.position.after(key) {
                    return None;
                }
                self.position.delivered(key, id);
            }
        }
        OFFSET.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            self.position.encode(&mut buf);
            corecast_wire::packet::with_offset(frame, &buf)
        })
    }

    pub fn offset(&self) -> String {
        let mut out = Vec::with_capacity(16);
        self.position.encode(&mut out);
        String::from_utf8(out).expect("invariant: an offset is ASCII")
    }
}

thread_local! {
    /// An offset being written (per thread, so that writing one allocates nothing).
    static OFFSET: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The presence announcements a shard made lately (`userOnline`, to its connections), so that
/// a recovered client learns the current state of the co-members whose state changed while it
/// was away: [`PresenceLog::since`]. Bounded by age and count; after a restart it starts empty.
pub struct PresenceLog {
    /// (wall ms, user, online, the groups announced to), oldest first.
    entries: std::collections::VecDeque<(i64, UserId, bool, std::sync::Arc<[GroupId]>)>,
}

impl PresenceLog {
    /// Announcements older than this are forgotten (socket.io's own recovery keeps sessions
    /// for as long by default).
    pub const MAX_AGE_MS: i64 = 2 * 60_000;
    /// At most this many are kept.
    pub const MAX_ENTRIES: usize = 65_536;

    pub fn new() -> PresenceLog {
        PresenceLog {
            entries: std::collections::VecDeque::new(),
        }
    }

    pub fn record(
        &mut self,
        at_ms: i64,
        user: UserId,
        online: bool,
        groups: std::sync::Arc<[GroupId]>,
    ) {
        self.entries.push_back((at_ms, user, online, groups));
        while self.entries.len() > Self::MAX_ENTRIES
            || self
                .entries
                .front()
                .is_some_and(|e| e.0 < at_ms - Self::MAX_AGE_MS)
        {
            self.entries.pop_front();
        }
    }

    /// The latest announcement of each user but `me` made at `since_ms` or later to one of
    /// `groups`, oldest first, as (user, online): the current state of the co-members whose
    /// state changed since.
    pub fn since(
        &self,
        since_ms: i64,
        me: UserId,
        groups: &std::collections::HashSet<GroupId>,
    ) -> Vec<(UserId, bool)> {
        let from = self.entries.partition_point(|e| e.0 < since_ms);
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<(UserId, bool)> = self
            .entries
            .range(from..)
            .rev()
            .filter(|(_, u, _, g)| *u != me && g.iter().any(|g| groups.contains(g)))
            .filter(|(_, u, _, _)| seen.insert(*u))
            .map(|&(_, u, online, _)| (u, online))
            .collect();
        out.reverse();
        out
    }
}

impl Default for PresenceLog {
    fn default() -> Self {
        PresenceLog::new()
    }
}

/// A number for a recovering CONNECT, distinct from the thread's others for a long while.
fn next_attempt() -> u32 {
    thread_local! {
        static NEXT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    NEXT.with(|n| {
        n.set(n.get().wrapping_add(1));
        n.get()
    })
}

/// A session's floor at `ms`: just below the first id of that millisecond.
fn session_floor(ms: u64) -> MessageId {
    MessageId(MessageId::new(ms as i64, 0, 0).0.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_pid_is_good_only_for_its_user_and_key() {
        let key = PidKey::new(b"a key of some length, 32 bytes..");
        let pid = key.mint(UserId(7), NOW);
        assert_eq!(key.verify(&pid, UserId(7)).map(|s| s.start_ms), Some(NOW));
        let session = key.verify(&pid, UserId(7)).unwrap();
        assert_eq!(key.pid(UserId(7), session), pid, "written again the same");
        assert_eq!(key.verify(&pid, UserId(8)), None, "another user's");
        assert_eq!(PidKey::new(b"another key").verify(&pid, UserId(7)), None);
        assert_ne!(key.mint(UserId(7), NOW), pid, "each session its own");
        let mut forged = pid.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        assert_eq!(key.verify(&forged, UserId(7)), None, "a changed tag");
        for bad in ["", "x", "1.2", "1.2.3", &format!("{pid}.1"), "1.2.zz"] {
            assert_eq!(key.verify(bad, UserId(7)), None, "{bad:?}");
        }
    }

    #[test]
    fn a_recovery_needs_a_good_pid_and_a_position_inside_the_window() {
        let key = PidKey::new(b"k");
        let pid = key.mint(UserId(1), NOW);
        let day = 86_400_000;
        let r = Recovery::resume(&key, UserId(1), &pid, None, NOW + 5, day).unwrap();
        assert_eq!(
            key.pid(UserId(1), r.session),
            pid,
            "the same session goes on"
        );
        assert_eq!(
            r.after(&GroupId::new("g")),
            session_floor(NOW),
            "no offset: from the start"
        );
        assert!(Recovery::resume(&key, UserId(2), &pid, None, NOW, day).is_none());
        assert!(Recovery::resume(&key, UserId(1), &pid, Some("no!"), NOW, day).is_none());
        assert!(
            Recovery::resume(&key, UserId(1), &pid, None, NOW + day + 1, day).is_none(),
            "past the window"
        );
        let mut live = Recovery::fresh(NOW);
        let live_pid = key.pid(UserId(1), live.session);
        let m = MessageId::new(NOW as i64 + 10, 0, 0);
        let frame = event(&GroupId::new("g"));
        assert!(live
            .frame_for(&GroupId::new("g"), Event::Stored(m), &frame)
            .is_some());
        let offset = live.offset();
        let r = Recovery::resume(&key, UserId(1), &live_pid, Some(&offset), NOW + 20, day);
        assert_eq!(r.unwrap().after(&GroupId::new("g")), m);
    }

    fn event(group: &GroupId) -> Bytes {
        let json = format!("{{\"groupId\":\"{}\"}}", group.as_str());
        corecast_wire::packet::event_frame(
            corecast_wire::ws::Role::Server,
            "newMessage",
            &[json.as_bytes()],
        )
    }

    /// The offset a frame carries: its last argument.
    fn offset_of(frame: &Bytes) -> Option<String> {
        let (_, payload) = corecast_wire::ws::server_frames(frame).next()?;
        let args: serde_json::Value = serde_json::from_slice(&payload[2..]).ok()?;
        Some(args.as_array()?.get(2)?.as_str()?.to_string())
    }

    #[test]
    fn offsets_follow_deliveries_and_a_message_had_is_not_written_again() {
        let mut r = Recovery::fresh(NOW);
        let g = GroupId::new("g");
        let frame = event(&g);
        let (a, b) = (
            MessageId::new(NOW as i64 + 1, 0, 0),
            MessageId::new(NOW as i64 + 2, 0, 0),
        );
        let online = r.frame_for(&g, Event::Unstored, &frame).unwrap();
        assert_eq!(online, frame, "not stored: as is");
        let first = r.frame_for(&g, Event::Stored(b), &frame).unwrap();
        assert_eq!(offset_of(&first), Some(r.offset()));
        assert_eq!(
            r.frame_for(&g, Event::Stored(a), &frame),
            None,
            "older than what it has"
        );
        assert_eq!(r.frame_for(&g, Event::Stored(b), &frame), None, "had it");
        // A read receipt is an event of the stream: its id moves the offset too.
        let c = MessageId::new(NOW as i64 + 3, 0, 0);
        let read = r.frame_for(&g, Event::Stored(c), &frame).unwrap();
        assert_ne!(offset_of(&read), offset_of(&first));
        assert_eq!(r.after(&g), c);
    }

    #[test]
    fn a_recovered_client_hears_the_latest_presence_of_co_members_since_it_left() {
        let g = |s: &str| GroupId::new(s);
        let groups: std::sync::Arc<[GroupId]> = vec![g("a"), g("b")].into();
        let other: std::sync::Arc<[GroupId]> = vec![g("z")].into();
        let mut log = PresenceLog::new();
        log.record(100, UserId(2), true, groups.clone());
        log.record(200, UserId(3), true, groups.clone());
        log.record(300, UserId(2), false, groups.clone());
        log.record(310, UserId(4), true, other);
        log.record(320, UserId(1), true, groups.clone());
        let mine: std::collections::HashSet<GroupId> = [g("b")].into();
        let (two, three) = (UserId(2), UserId(3));
        assert_eq!(
            log.since(150, UserId(1), &mine),
            vec![(three, true), (two, false)]
        );
        assert_eq!(log.since(250, UserId(1), &mine), vec![(two, false)]);
        assert!(log.since(400, UserId(1), &mine).is_empty());
        log.record(300 + PresenceLog::MAX_AGE_MS + 1, UserId(5), true, groups);
        assert_eq!(
            log.since(0, UserId(1), &mine),
            vec![(UserId(5), true)],
            "older ones forgotten"
        );
    }

    #[test]
    fn python_engineio_handshakes_are_told_apart() {
        assert!(takes_offsets("EIO=4&transport=polling&t=PxkQ3aB"));
        assert!(takes_offsets("EIO=4&transport=websocket"));
        assert!(!takes_offsets(
            "transport=polling&EIO=4&t=1764750000.1234567"
        ));
        assert!(!takes_offsets("transport=websocket&EIO=4&t=1764750000.5"));
    }
}
