//! One storage suite, run unchanged against every backend: each test below is a plain function
//! taking a [`Fixture`]; the `suite!` macro instantiates it once per backend.
//!
//! The ScyllaDB tests need a real CQL server at `CORECAST_TEST_SCYLLA_NODES` (default
//! `127.0.0.1:9042`), e.g. `scripts/cassandra.sh start`. Each test uses a fresh random keyspace
//! and drops it at the end. When the server is not reachable they fail, never pass silently.

use corecast_storage::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

enum Kind {
    Embedded(tempfile::TempDir),
    Scylla(Backend),
}

struct Fixture {
    kind: Kind,
    handle: Option<StoreHandle>,
}

fn scylla_nodes() -> Vec<String> {
    std::env::var("CORECAST_TEST_SCYLLA_NODES")
        .unwrap_or_else(|_| "127.0.0.1:9042".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn scylla_config(keyspace: &str, nodes: Vec<String>) -> Backend {
    Backend::Scylla {
        nodes,
        keyspace: keyspace.into(),
        replication: "'class': 'SimpleStrategy', 'replication_factor': 1".into(),
        consistency: "LOCAL_QUORUM".into(),
        local_dc: None,
        migrate: true,
    }
}

impl Fixture {
    fn embedded() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = Fixture {
            kind: Kind::Embedded(dir),
            handle: None,
        };
        f.open();
        f
    }

    fn scylla() -> Fixture {
        let keyspace = format!("cc_test_{:016x}", fastrand::u64(..));
        let mut f = Fixture {
            kind: Kind::Scylla(scylla_config(&keyspace, scylla_nodes())),
            handle: None,
        };
        f.open();
        f
    }

    fn config(&self) -> Backend {
        match &self.kind {
            Kind::Embedded(dir) => Backend::embedded(dir.path()),
            Kind::Scylla(c) => c.clone(),
        }
    }

    fn open(&mut self) {
        if let Kind::Scylla(_) = self.kind {
            // Fail at once (not after the readiness wait) when nothing listens at all.
            let nodes = scylla_nodes();
            let reachable = nodes.iter().any(|n| {
                use std::net::ToSocketAddrs;
                n.to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .is_some_and(|a| {
                        std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok()
                    })
            });
            assert!(
                reachable,
                "no CQL server answers at {nodes:?} (CORECAST_TEST_SCYLLA_NODES): \
                 run `scripts/cassandra.sh start` before the ScyllaDB tests"
            );
        }
        let handle = open(&self.config()).expect("open the store");
        // The ScyllaDB backend connects in the background; wait (bounded) until it answers.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match handle.blocking().ping() {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!(
                    "the store did not become ready: {e}\n\
                     For the ScyllaDB tests a CQL server must answer at {:?} \
                     (CORECAST_TEST_SCYLLA_NODES): run `scripts/cassandra.sh start`",
                    scylla_nodes()
                ),
            }
        }
        self.handle = Some(handle);
    }

    /// Drops the handle (the backend stops once its queue is drained) and opens the same store
    /// again: the embedded folder, or a new session on the same keyspace.
    fn reopen(&mut self) {
        self.handle = None;
        // Let the old backend thread see the disconnect and finish.
        std::thread::sleep(Duration::from_millis(200));
        self.open();
    }

    fn s(&self) -> Blocking<'_> {
        self.handle.as_ref().expect("store open").blocking()
    }

    fn handle(&self) -> StoreHandle {
        self.handle.clone().expect("store open")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.handle = None;
        if let Kind::Scylla(Backend::Scylla {
            nodes, keyspace, ..
        }) = &self.kind
        {
            // Best effort: leave no test keyspaces behind.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(s) = ::scylla::client::session_builder::SessionBuilder::new()
                    .known_nodes(nodes)
                    .build()
                    .await
                {
                    let _ = s
                        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
                        .await;
                }
            });
        }
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $name() { super::$name(super::Fixture::embedded()) } )*
        }
        mod scylla_backend {
            $( #[test] fn $name() { super::$name(super::Fixture::scylla()) } )*
        }
    };
}

suite!(
    users,
    groups_put_and_replace,
    members_add_remove_and_groups_of_user,
    append_and_duplicate_client_msg_id,
    mark_read_and_unknown_message,
    concurrent_read_by_from_many_users,
    history_newest_first_with_pagination_edges,
    since_oldest_first_between_bounds,
    since_has_the_read_receipts_in_order,
    presence,
    notices_pending_delete_fail_count,
    restart_durability,
    string_group_ids_are_kept_exactly,
    the_sender_has_read_their_message,
);

const DAY: i64 = 86_400_000;
const BASE: i64 = ID_EPOCH_MS + 100 * DAY + 3_600_000;

/// A fresh id for a read receipt's event.
fn receipt() -> MessageId {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    MessageId::new(BASE + 50 * DAY, 7, n)
}

fn msg(group: &str, sender: u64, ms: i64, seq: u16, key: Option<&str>) -> NewMessage {
    NewMessage {
        id: MessageId::new(ms, 1, seq),
        group: GroupId::new(group),
        sender: UserId(sender),
        text: format!("hello at {ms}/{seq}"),
        attachments: vec![Attachment {
            url: "https://example.com/a.png".into(),
            kind: "image".into(),
        }],
        timestamp: ms,
        client_msg_id: key.map(str::to_string),
    }
}

fn group(id: &str, name: &str, members: &[u64]) -> Group {
    Group {
        id: GroupId::new(id),
        name: name.into(),
        members: members.iter().map(|&u| UserId(u)).collect(),
    }
}

fn users_of(v: &[u64]) -> Vec<UserId> {
    v.iter().map(|&u| UserId(u)).collect()
}

fn users(f: Fixture) {
    let s = f.s();
    assert_eq!(s.get_user(UserId(7)).unwrap(), None);
    let u = User {
        id: UserId(7),
        email: Some("a@example.com".into()),
        name: Some("Ada".into()),
    };
    s.put_user(u.clone()).unwrap();
    assert_eq!(s.get_user(UserId(7)).unwrap(), Some(u));
    // Replace: fields left out are cleared.
    let u2 = User {
        id: UserId(7),
        email: None,
        name: Some("Ada L.".into()),
    };
    s.put_user(u2.clone()).unwrap();
    assert_eq!(s.get_user(UserId(7)).unwrap(), Some(u2));
    assert_eq!(s.get_user(UserId(8)).unwrap(), None);
}

fn groups_put_and_replace(f: Fixture) {
    let s = f.s();
    assert_eq!(s.get_group(GroupId::new("1")).unwrap(), None);
    let c = s.put_group(group("1", "one", &[3, 1, 2, 2])).unwrap();
    assert_eq!(
        c,
        MembershipChange {
            added: users_of(&[1, 2, 3]),
            removed: vec![]
        }
    );
    assert_eq!(
        s.get_group(GroupId::new("1")).unwrap(),
        Some(group("1", "one", &[1, 2, 3]))
    );
    let c = s.put_group(group("1", "uno", &[4, 3, 4])).unwrap();
    assert_eq!(
        c,
        MembershipChange {
            added: users_of(&[4]),
            removed: users_of(&[1, 2])
        }
    );
    assert_eq!(
        s.get_group(GroupId::new("1")).unwrap(),
        Some(group("1", "uno", &[3, 4]))
    );
    assert_eq!(s.groups_of_user(UserId(1)).unwrap(), vec![]);
    assert_eq!(
        s.groups_of_user(UserId(4)).unwrap(),
        vec![GroupId::new("1")]
    );
    // Same list again: no change.
    let c = s.put_group(group("1", "uno", &[3, 4])).unwrap();
    assert_eq!(c, MembershipChange::default());
    // Emptied.
    let c = s.put_group(group("1", "uno", &[])).unwrap();
    assert_eq!(
        c,
        MembershipChange {
            added: vec![],
            removed: users_of(&[3, 4])
        }
    );
    assert_eq!(
        s.get_group(GroupId::new("1")).unwrap(),
        Some(group("1", "uno", &[]))
    );
    // A large group (several batches on ScyllaDB).
    let many: Vec<u64> = (1000..1300).collect();
    let c = s.put_group(group("2", "big", &many)).unwrap();
    assert_eq!(c.added.len(), 300);
    assert_eq!(
        s.get_group(GroupId::new("2")).unwrap().unwrap().members,
        users_of(&many)
    );
}

fn members_add_remove_and_groups_of_user(f: Fixture) {
    let s = f.s();
    assert_eq!(
        s.add_member(GroupId::new("9"), UserId(1)),
        Err(Error::NoSuchGroup(GroupId::new("9")))
    );
    s.put_group(group("9", "nine", &[1])).unwrap();
    s.put_group(group("5", "five", &[])).unwrap();
    s.put_group(group("12", "twelve", &[])).unwrap();
    assert_eq!(s.add_member(GroupId::new("9"), UserId(2)), Ok(true));
    assert_eq!(s.add_member(GroupId::new("9"), UserId(2)), Ok(false));
    assert_eq!(s.add_member(GroupId::new("12"), UserId(2)), Ok(true));
    assert_eq!(s.add_member(GroupId::new("5"), UserId(2)), Ok(true));
    // Ascending as strings (bytes of UTF-8), not as numbers.
    assert_eq!(
        s.groups_of_user(UserId(2)).unwrap(),
        vec![GroupId::new("12"), GroupId::new("5"), GroupId::new("9")]
    );
    assert_eq!(
        s.get_group(GroupId::new("9")).unwrap().unwrap().members,
        users_of(&[1, 2])
    );
    assert_eq!(s.remove_member(GroupId::new("9"), UserId(2)), Ok(true));
    assert_eq!(s.remove_member(GroupId::new("9"), UserId(2)), Ok(false));
    assert_eq!(s.remove_member(GroupId::new("77"), UserId(2)), Ok(false));
    assert_eq!(
        s.groups_of_user(UserId(2)).unwrap(),
        vec![GroupId::new("12"), GroupId::new("5")]
    );
    assert_eq!(
        s.get_group(GroupId::new("9")).unwrap().unwrap().members,
        users_of(&[1])
    );
    assert_eq!(s.groups_of_user(UserId(404)).unwrap(), vec![]);
    // Several users in one request: one answer each, in the order asked, repeats included.
    assert_eq!(
        s.groups_of_users(vec![UserId(404), UserId(2), UserId(1), UserId(2)])
            .unwrap(),
        vec![
            vec![],
            vec![GroupId::new("12"), GroupId::new("5")],
            vec![GroupId::new("9")],
            vec![GroupId::new("12"), GroupId::new("5")],
        ]
    );
    assert_eq!(
        s.groups_of_users(vec![]).unwrap(),
        Vec::<Vec<GroupId>>::new()
    );

    // Queue order is kept for requests submitted without waiting: add then remove ends removed.
    let h = f.handle();
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..20u64 {
        let tx1 = tx.clone();
        h.submit(Request::AddMember {
            group: GroupId::new("9"),
            user: UserId(50 + i),
            reply: Box::new(move |r| tx1.send(r.map(|_| ())).unwrap()),
        });
        let tx2 = tx.clone();
        h.submit(Request::RemoveMember {
            group: GroupId::new("9"),
            user: UserId(50 + i),
            reply: Box::new(move |r| tx2.send(r.map(|_| ())).unwrap()),
        });
    }
    for _ in 0..40 {
        rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    }
    assert_eq!(
        s.get_group(GroupId::new("9")).unwrap().unwrap().members,
        users_of(&[1])
    );
}

fn append_and_duplicate_client_msg_id(f: Fixture) {
    let s = f.s();
    s.put_group(group("3", "three", &[1, 2, 5])).unwrap();
    let first = msg("3", 1, BASE, 0, Some("k-1"));
    let a = s.append_message(first.clone(), users_of(&[2])).unwrap();
    assert!(!a.duplicate);
    assert_eq!(a.message, StoredMessage::from(first.clone()));
    // A resend: new id, same key. The original comes back; nothing stored, no second notice.
    let again = msg("3", 1, BASE + 50, 0, Some("k-1"));
    let d = s.append_message(again.clone(), users_of(&[2, 5])).unwrap();
    assert!(d.duplicate);
    assert_eq!(d.message, StoredMessage::from(first.clone()));
    assert_eq!(s.get_message(GroupId::new("3"), again.id).unwrap(), None);
    assert_eq!(s.history(GroupId::new("3"), 10, None).unwrap().len(), 1);
    let pending = s.pending_notices(100).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].user, pending[0].message), (UserId(2), first.id));
    // The same key from another sender, or in another group, is another message.
    let other = msg("3", 2, BASE + 60, 0, Some("k-1"));
    assert!(!s.append_message(other, vec![]).unwrap().duplicate);
    let other_group = msg("4", 1, BASE + 70, 0, Some("k-1"));
    assert!(!s.append_message(other_group, vec![]).unwrap().duplicate);
    // No key: never a duplicate.
    assert!(
        !s.append_message(msg("3", 1, BASE + 80, 0, None), vec![])
            .unwrap()
            .duplicate
    );
    assert!(
        !s.append_message(msg("3", 1, BASE + 81, 0, None), vec![])
            .unwrap()
            .duplicate
    );
    assert_eq!(s.history(GroupId::new("3"), 10, None).unwrap().len(), 4);
    // The duplicate answer carries the current readers.
    s.mark_read(GroupId::new("3"), first.id, UserId(5), receipt())
        .unwrap();
    let d = s.append_message(again, vec![]).unwrap();
    assert!(d.duplicate);
    assert_eq!(d.message.read_by, users_of(&[1, 5]));

    // Resends racing the original (submitted without waiting) still store one message.
    let h = f.handle();
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..10u16 {
        let tx = tx.clone();
        h.submit(Request::AppendMessage {
            message: msg("3", 9, BASE + 1000 + i as i64, 0, Some("race")),
            notify: users_of(&[2]),
            reply: Box::new(move |r| tx.send(r).unwrap()),
        });
    }
    let results: Vec<Appended> = (0..10)
        .map(|_| rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap())
        .collect();
    assert_eq!(results.iter().filter(|a| !a.duplicate).count(), 1);
    assert!(results
        .iter()
        .all(|a| a.message.id == MessageId::new(BASE + 1000, 1, 0)));
    assert_eq!(s.pending_notices(100).unwrap().len(), 2);
}

fn mark_read_and_unknown_message(f: Fixture) {
    let s = f.s();
    s.put_group(group("3", "three", &[1, 2])).unwrap();
    let m = msg("3", 1, BASE, 0, None);
    s.append_message(m.clone(), vec![]).unwrap();
    let unknown = MessageId::new(BASE + 1, 1, 0);
    assert_eq!(
        s.mark_read(GroupId::new("3"), unknown, UserId(2), receipt()),
        Err(Error::NoSuchMessage {
            group: GroupId::new("3"),
            message: unknown
        })
    );
    // The right id in the wrong group is unknown too.
    assert_eq!(
        s.mark_read(GroupId::new("4"), m.id, UserId(2), receipt()),
        Err(Error::NoSuchMessage {
            group: GroupId::new("4"),
            message: m.id
        })
    );
    assert_eq!(s.get_message(GroupId::new("3"), unknown).unwrap(), None);
    assert_eq!(
        s.mark_read(GroupId::new("3"), m.id, UserId(2), receipt()),
        Ok(true)
    );
    assert_eq!(
        s.mark_read(GroupId::new("3"), m.id, UserId(2), receipt()),
        Ok(false)
    );
    // The sender has read it from the start: nothing to add.
    assert_eq!(
        s.mark_read(GroupId::new("3"), m.id, UserId(1), receipt()),
        Ok(false)
    );
    let got = s.get_message(GroupId::new("3"), m.id).unwrap().unwrap();
    assert_eq!(got.read_by, users_of(&[1, 2]));
    assert_eq!(got.text, m.text);
    assert_eq!(got.attachments, m.attachments);
    assert_eq!(got.timestamp, m.timestamp);
    // Marking an unknown message created nothing.
    assert_eq!(s.history(GroupId::new("3"), 10, None).unwrap().len(), 1);
    assert_eq!(s.history(GroupId::new("4"), 10, None).unwrap(), vec![]);
}

fn concurrent_read_by_from_many_users(f: Fixture) {
    let s = f.s();
    s.put_group(group("6", "six", &[])).unwrap();
    let m = msg("6", 1, BASE, 0, None);
    s.append_message(m.clone(), vec![]).unwrap();
    let handle = f.handle();
    let added = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let h = handle.clone();
            let added = added.clone();
            std::thread::spawn(move || {
                for i in 0..10u64 {
                    let user = UserId(100 + t * 10 + i);
                    // Twice each: the second must not add a reader.
                    for _ in 0..2 {
                        if h.blocking()
                            .mark_read(GroupId::new("6"), m.id, user, receipt())
                            .unwrap()
                        {
                            added.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The sender (1) and every reader.
    let expected: Vec<UserId> = std::iter::once(1).chain(100..180).map(UserId).collect();
    assert_eq!(
        s.get_message(GroupId::new("6"), m.id)
            .unwrap()
            .unwrap()
            .read_by,
        expected
    );
    assert_eq!(added.load(std::sync::atomic::Ordering::Relaxed), 80);
}

/// What connection state recovery reads: a group's messages after one id and up to another,
/// oldest first, across buckets and empty days, with a limit.
fn since_oldest_first_between_bounds(f: Fixture) {
    let s = f.s();
    s.put_group(group("9", "nine", &[1])).unwrap();
    let mut ids = Vec::new();
    for day in [0i64, 1, 4] {
        for i in 0..3u16 {
            let m = msg("9", 1, BASE + day * DAY + i as i64 * 1000, i, None);
            ids.push(m.id);
            s.append_message(m, vec![]).unwrap();
        }
    }
    s.append_message(msg("19", 1, BASE + DAY, 0, None), vec![])
        .unwrap();
    let since = |after: MessageId, upto: MessageId, limit| -> Vec<MessageId> {
        s.since(GroupId::new("9"), after, upto, limit)
            .unwrap()
            .into_iter()
            .map(|e| e.id())
            .collect()
    };
    let before_all = MessageId::new(BASE - 30 * DAY, 0, 0);
    let after_all = MessageId::new(BASE + 40 * DAY, 0, 0);
    assert_eq!(
        since(before_all, after_all, 100),
        ids,
        "everything, oldest first"
    );
    assert_eq!(
        since(before_all, after_all, 4),
        ids[..4].to_vec(),
        "the limit"
    );
    assert_eq!(
        since(ids[2], after_all, 100),
        ids[3..].to_vec(),
        "strictly after"
    );
    assert_eq!(
        since(ids[2], ids[6], 100),
        ids[3..7].to_vec(),
        "up to, inclusive"
    );
    assert_eq!(
        since(MessageId::new(BASE + 2 * DAY, 0, 0), after_all, 100),
        ids[6..].to_vec(),
        "from an empty day"
    );
    assert_eq!(
        since(ids[8], after_all, 100),
        vec![],
        "nothing after the newest"
    );
    assert_eq!(since(ids[5], ids[3], 100), vec![], "an empty range");
    assert_eq!(since(before_all, after_all, 0), vec![]);
    let first = s
        .since(GroupId::new("9"), before_all, after_all, 1)
        .unwrap();
    let GroupEvent::Message(first) = &first[0] else {
        panic!("a message first: {first:?}")
    };
    assert_eq!(first.group, GroupId::new("9"));
    assert_eq!(first.read_by, vec![UserId(1)], "the sender has read it");
}

/// Read receipts are events of the group's stream too: `since` gives them with the messages,
/// in id order, and only the receipts that added a reader.
fn since_has_the_read_receipts_in_order(f: Fixture) {
    let s = f.s();
    s.put_group(group("12", "twelve", &[1, 2, 3])).unwrap();
    let g = GroupId::new("12");
    let (a, b) = (
        msg("12", 1, BASE, 0, None),
        msg("12", 1, BASE + 1000, 0, None),
    );
    s.append_message(a.clone(), vec![]).unwrap();
    // A receipt between the messages, one a day later (a bucket with no message), one that
    // adds nothing (the sender), one for an unknown message.
    let read_a = MessageId::new(BASE + 500, 1, 0);
    assert_eq!(s.mark_read(g.clone(), a.id, UserId(2), read_a), Ok(true));
    s.append_message(b.clone(), vec![]).unwrap();
    let read_b = MessageId::new(BASE + DAY, 1, 0);
    assert_eq!(s.mark_read(g.clone(), b.id, UserId(3), read_b), Ok(true));
    let by_sender = MessageId::new(BASE + DAY + 1, 1, 0);
    assert_eq!(
        s.mark_read(g.clone(), b.id, UserId(1), by_sender),
        Ok(false)
    );
    let again = MessageId::new(BASE + DAY + 2, 1, 0);
    assert_eq!(s.mark_read(g.clone(), a.id, UserId(2), again), Ok(false));
    let unknown = MessageId::new(BASE + 2, 1, 0);
    assert!(s
        .mark_read(
            g.clone(),
            unknown,
            UserId(2),
            MessageId::new(BASE + DAY + 3, 1, 0)
        )
        .is_err());
    let receipt = |id, message, user| {
        GroupEvent::Read(ReadReceipt {
            id,
            group: g.clone(),
            message,
            user: UserId(user),
        })
    };
    let before_all = MessageId::new(BASE - DAY, 0, 0);
    let after_all = MessageId::new(BASE + 3 * DAY, 0, 0);
    let got = s.since(g.clone(), before_all, after_all, 100).unwrap();
    let ids: Vec<MessageId> = got.iter().map(GroupEvent::id).collect();
    assert_eq!(
        ids,
        vec![a.id, read_a, b.id, read_b],
        "one stream, in id order"
    );
    assert_eq!(got[1], receipt(read_a, a.id, 2));
    assert_eq!(got[3], receipt(read_b, b.id, 3));
    assert_eq!(
        s.since(g.clone(), a.id, after_all, 2).unwrap()[..],
        got[1..3],
        "strictly after, with the limit counting receipts"
    );
    assert_eq!(
        s.since(g.clone(), b.id, after_all, 100).unwrap(),
        vec![got[3].clone()],
        "a receipt in a bucket of its own"
    );
}

fn history_newest_first_with_pagination_edges(f: Fixture) {
    let s = f.s();
    s.put_group(group("8", "eight", &[1])).unwrap();
    // Messages on days 0, 1 and 4 (days 2 and 3 empty), three per day, plus another group's.
    let mut ids = Vec::new();
    for day in [0i64, 1, 4] {
        for i in 0..3u16 {
            let m = msg("8", 1, BASE + day * DAY + i as i64 * 1000, i, None);
            ids.push(m.id);
            s.append_message(m, vec![]).unwrap();
        }
    }
    s.append_message(msg("18", 1, BASE + DAY, 0, None), vec![])
        .unwrap();
    ids.reverse(); // newest first
    let page = |limit, before| -> Vec<MessageId> {
        s.history(GroupId::new("8"), limit, before)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect()
    };
    assert_eq!(page(0, None), vec![]);
    assert_eq!(page(1, None), ids[..1].to_vec());
    assert_eq!(page(100, None), ids);
    assert_eq!(page(ids.len(), None), ids);
    // Walk with pages of 2, crossing bucket boundaries and the empty days.
    let mut walked = Vec::new();
    let mut before = None;
    loop {
        let p = page(2, before);
        if p.is_empty() {
            break;
        }
        assert!(p.len() <= 2);
        before = p.last().copied();
        walked.extend(p);
    }
    assert_eq!(walked, ids);
    // A page ending exactly at a bucket boundary, then the next one.
    assert_eq!(page(3, None), ids[..3].to_vec());
    assert_eq!(page(3, Some(ids[2])), ids[3..6].to_vec());
    assert_eq!(page(3, Some(ids[5])), ids[6..9].to_vec());
    assert_eq!(page(3, Some(ids[8])), vec![]);
    // `before` the oldest, and before an id far older than the group.
    assert_eq!(page(10, Some(*ids.last().unwrap())), vec![]);
    assert_eq!(
        page(10, Some(MessageId::new(BASE - 30 * DAY, 0, 0))),
        vec![]
    );
    // `before` an id on an empty day, and one newer than everything.
    assert_eq!(
        page(10, Some(MessageId::new(BASE + 3 * DAY, 0, 0))),
        ids[3..].to_vec()
    );
    assert_eq!(page(10, Some(MessageId::new(BASE + 40 * DAY, 0, 0))), ids);
    // A group without messages.
    assert_eq!(page_of(&s, "99"), vec![]);
    // The other group sees only its own.
    assert_eq!(page_of(&s, "18").len(), 1);
    let full = s.history(GroupId::new("8"), 1, None).unwrap();
    assert_eq!(full[0].sender, UserId(1));
    assert_eq!(full[0].group, GroupId::new("8"));
}

fn page_of(s: &Blocking<'_>, g: &str) -> Vec<MessageId> {
    s.history(GroupId::new(g), 10, None)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect()
}

fn presence(f: Fixture) {
    let s = f.s();
    assert_eq!(s.get_presence(UserId(1)).unwrap(), None);
    s.set_presence(UserId(1), true, 10).unwrap();
    assert_eq!(
        s.get_presence(UserId(1)).unwrap(),
        Some(Presence {
            online: true,
            last_seen: 10
        })
    );
    s.set_presence(UserId(1), false, 20).unwrap();
    assert_eq!(
        s.get_presence(UserId(1)).unwrap(),
        Some(Presence {
            online: false,
            last_seen: 20
        })
    );
    // Online then offline queued back to back without waiting: the last one queued wins.
    let h = f.handle();
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..20 {
        let tx = tx.clone();
        h.submit(Request::SetPresence {
            user: UserId(2),
            online: i % 2 == 0,
            at: 100 + i,
            reply: Box::new(move |r| tx.send(r).unwrap()),
        });
    }
    for _ in 0..20 {
        rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    }
    assert_eq!(
        s.get_presence(UserId(2)).unwrap(),
        Some(Presence {
            online: false,
            last_seen: 119
        })
    );
}

fn notices_pending_delete_fail_count(f: Fixture) {
    let s = f.s();
    assert_eq!(s.pending_notices(10).unwrap(), vec![]);
    assert_eq!(s.failed_notice_count().unwrap(), 0);
    let m1 = msg("3", 1, BASE, 0, None);
    let m2 = msg("3", 1, BASE + 10, 0, None);
    let m3 = msg("4", 2, BASE + 20, 0, None);
    s.append_message(m1.clone(), users_of(&[2, 3])).unwrap();
    s.append_message(m2.clone(), users_of(&[2])).unwrap();
    s.append_message(m3.clone(), users_of(&[1, 3])).unwrap();
    // A large fan-out (written in several batches on ScyllaDB).
    let m4 = msg("5", 1, BASE + 30, 0, None);
    s.append_message(m4.clone(), (1000..1200).map(UserId).collect())
        .unwrap();
    let all = s.pending_notices(1000).unwrap();
    assert_eq!(all.len(), 205);
    // Oldest first: in the order the messages were appended.
    let order: Vec<(MessageId, UserId)> = all.iter().take(5).map(|n| (n.message, n.user)).collect();
    assert_eq!(
        order,
        vec![
            (m1.id, UserId(2)),
            (m1.id, UserId(3)),
            (m2.id, UserId(2)),
            (m3.id, UserId(1)),
            (m3.id, UserId(3))
        ]
    );
    assert_eq!(
        (all[0].group.clone(), all[0].created),
        (GroupId::new("3"), m1.timestamp)
    );
    assert_eq!(all[3].group, GroupId::new("4"));
    let mut unique: Vec<NoticeId> = all.iter().map(|n| n.id).collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 205, "notice ids are unique");
    assert!(all[5..].iter().all(|n| n.message == m4.id));
    assert_eq!(s.pending_notices(2).unwrap(), all[..2].to_vec());
    assert_eq!(s.pending_notices(0).unwrap(), vec![]);

    s.delete_notices(vec![all[0].id, all[2].id, NoticeId(12345)])
        .unwrap();
    s.fail_notices(vec![all[1].id], "550 no such mailbox".into())
        .unwrap();
    assert_eq!(s.failed_notice_count().unwrap(), 1);
    let left = s.pending_notices(3).unwrap();
    assert_eq!(left, all[3..6].to_vec());
    s.fail_notices(vec![all[3].id, all[4].id, NoticeId(999)], "bounced".into())
        .unwrap();
    assert_eq!(s.failed_notice_count().unwrap(), 3);
    s.delete_notices(all[5..].iter().map(|n| n.id).collect())
        .unwrap();
    assert_eq!(s.pending_notices(10).unwrap(), vec![]);
    assert_eq!(s.failed_notice_count().unwrap(), 3);
}

fn restart_durability(mut f: Fixture) {
    {
        let s = f.s();
        s.put_user(User {
            id: UserId(1),
            email: Some("u@example.com".into()),
            name: None,
        })
        .unwrap();
        s.put_group(group("3", "three", &[1, 2])).unwrap();
        s.append_message(msg("3", 1, BASE, 0, Some("k")), users_of(&[2]))
            .unwrap();
        s.mark_read(
            GroupId::new("3"),
            MessageId::new(BASE, 1, 0),
            UserId(2),
            receipt(),
        )
        .unwrap();
        s.set_presence(UserId(1), true, 77).unwrap();
    }
    f.reopen();
    let s = f.s();
    assert_eq!(
        s.get_user(UserId(1)).unwrap().unwrap().email.as_deref(),
        Some("u@example.com")
    );
    assert_eq!(
        s.get_group(GroupId::new("3")).unwrap(),
        Some(group("3", "three", &[1, 2]))
    );
    assert_eq!(
        s.groups_of_user(UserId(2)).unwrap(),
        vec![GroupId::new("3")]
    );
    let h = s.history(GroupId::new("3"), 10, None).unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].read_by, users_of(&[1, 2]));
    assert_eq!(
        s.get_presence(UserId(1)).unwrap(),
        Some(Presence {
            online: true,
            last_seen: 77
        })
    );
    assert_eq!(s.pending_notices(10).unwrap().len(), 1);
    // The idempotency key survived too.
    assert!(
        s.append_message(msg("3", 1, BASE + 5, 0, Some("k")), vec![])
            .unwrap()
            .duplicate
    );
}

/// Group ids are strings: unicode, spaces, quotes and digits are kept byte for byte, and two ids
/// that would be the same number (`"007"`, `"7"`) are two groups, also after a restart.
fn string_group_ids_are_kept_exactly(mut f: Fixture) {
    let ids = [
        "team berlin",
        "Zürich ☕ 東京",
        "007",
        "7",
        "it's \"quoted\" \\ 100%25; DROP TABLE groups",
        // 128 bytes: 42 three-byte characters and two ASCII ones.
        &format!("{}ab", "☕".repeat(42)),
    ];
    assert_eq!(ids[5].len(), 128);
    {
        let s = f.s();
        for (i, id) in ids.iter().enumerate() {
            s.put_group(group(id, &format!("name {i}"), &[1, 10 + i as u64]))
                .unwrap();
            let m = msg(id, 1, BASE + i as i64, 0, Some("same key"));
            assert!(!s.append_message(m, users_of(&[2])).unwrap().duplicate);
        }
    }
    f.reopen();
    let s = f.s();
    let mut sorted: Vec<GroupId> = ids.iter().map(|id| GroupId::new(*id)).collect();
    sorted.sort();
    assert_eq!(s.groups_of_user(UserId(1)).unwrap(), sorted);
    for (i, id) in ids.iter().enumerate() {
        let g = s.get_group(GroupId::new(*id)).unwrap().unwrap();
        assert_eq!(g.id.as_str(), *id);
        assert_eq!(g.name, format!("name {i}"));
        assert_eq!(g.members, users_of(&[1, 10 + i as u64]));
        assert_eq!(
            s.groups_of_user(UserId(10 + i as u64)).unwrap(),
            vec![GroupId::new(*id)]
        );
        let h = s.history(GroupId::new(*id), 10, None).unwrap();
        assert_eq!(h.len(), 1, "{id:?} sees only its own message");
        assert_eq!(h[0].group.as_str(), *id);
        assert_eq!(h[0].timestamp, BASE + i as i64);
        // The idempotency key is per group, too.
        let again = msg(id, 1, BASE + 100, 0, Some("same key"));
        assert!(s.append_message(again, vec![]).unwrap().duplicate);
    }
    // A message of "7" is not in "007".
    let seven = s.history(GroupId::new("7"), 1, None).unwrap()[0].id;
    assert_eq!(
        s.mark_read(GroupId::new("007"), seven, UserId(2), receipt()),
        Err(Error::NoSuchMessage {
            group: GroupId::new("007"),
            message: seven
        })
    );
    assert_eq!(
        s.get_message(GroupId::new("7"), seven)
            .unwrap()
            .unwrap()
            .group
            .as_str(),
        "7"
    );
    assert_eq!(s.get_group(GroupId::new("07")).unwrap(), None);
    assert_eq!(s.get_group(GroupId::new("team  berlin")).unwrap(), None);
    assert_eq!(
        s.add_member(GroupId::new("Team berlin"), UserId(3)),
        Err(Error::NoSuchGroup(GroupId::new("Team berlin")))
    );
    let mut noticed: Vec<String> = s
        .pending_notices(100)
        .unwrap()
        .into_iter()
        .map(|n| n.group.as_str().to_string())
        .collect();
    noticed.sort();
    let mut expected: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(noticed, expected);
}

/// A message starts as read by its sender (`readBy: [senderId]`), in the append's answer and
/// whenever it is read back; the sender's own mark adds nothing.
fn the_sender_has_read_their_message(f: Fixture) {
    let s = f.s();
    s.put_group(group("readers", "r", &[4, 5])).unwrap();
    let m = msg("readers", 4, BASE, 0, None);
    let appended = s.append_message(m.clone(), vec![]).unwrap();
    assert_eq!(appended.message.read_by, users_of(&[4]));
    let g = GroupId::new("readers");
    assert_eq!(
        s.get_message(g.clone(), m.id).unwrap().unwrap().read_by,
        users_of(&[4])
    );
    assert_eq!(
        s.mark_read(g.clone(), m.id, UserId(4), receipt()),
        Ok(false)
    );
    assert_eq!(
        s.history(g.clone(), 10, None).unwrap()[0].read_by,
        users_of(&[4])
    );
    assert_eq!(s.mark_read(g.clone(), m.id, UserId(5), receipt()), Ok(true));
    assert_eq!(
        s.mark_read(g.clone(), m.id, UserId(4), receipt()),
        Ok(false)
    );
    assert_eq!(
        s.history(g, 10, None).unwrap()[0].read_by,
        users_of(&[4, 5])
    );
}

/// ScyllaDB only: an unreachable database gives a handle at once whose requests fail fast with
/// `Unavailable` (readiness false), instead of blocking the caller.
#[test]
fn scylla_unreachable_fails_fast_and_ping_is_false() {
    let started = Instant::now();
    let h = open(&scylla_config("cc_unreachable", vec!["127.0.0.1:1".into()])).unwrap();
    let s = h.blocking();
    assert!(matches!(s.ping(), Err(Error::Unavailable(_))));
    match s.append_message(msg("1", 1, BASE, 0, None), vec![]) {
        Err(Error::Unavailable(m)) => assert!(m.contains("127.0.0.1:1"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// ScyllaDB only: a keyspace whose tables were created while group ids were integers is
/// refused, with a message that says what to do, by the gateway's store and by `migrate`.
#[test]
fn scylla_keyspace_with_integer_group_ids_is_refused() {
    let keyspace = format!("cc_test_{:016x}", fastrand::u64(..));
    let config = scylla_config(&keyspace, scylla_nodes());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let session = rt
        .block_on(
            ::scylla::client::session_builder::SessionBuilder::new()
                .known_nodes(scylla_nodes())
                .build(),
        )
        .expect("a CQL server at CORECAST_TEST_SCYLLA_NODES (scripts/cassandra.sh start)");
    let run = |cql: String| {
        rt.block_on(session.query_unpaged(cql, &[]))
            .expect("create the old schema");
    };
    run(format!(
        "CREATE KEYSPACE {keyspace} WITH replication = \
         {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    ));
    run(format!(
        "CREATE TABLE {keyspace}.groups (group_id bigint PRIMARY KEY, name text)"
    ));
    let expect_refusal = |what: &str, e: Error| match e {
        Error::Unavailable(m) => {
            assert!(
                m.contains(&format!("keyspace {keyspace} holds group ids as bigint"))
                    && m.contains("CORECAST_SCYLLA_KEYSPACE")
                    && m.contains("docs/storage.md"),
                "{what}: {m}"
            )
        }
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    };
    expect_refusal("migrate", migrate(&config).unwrap_err());
    let h = open(&config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match h.blocking().ping() {
            Err(Error::Unavailable(m)) if m.contains("holds group ids") => {
                expect_refusal("open", Error::Unavailable(m));
                break;
            }
            Ok(()) => panic!("the store accepted a keyspace with integer group ids"),
            Err(e) => {
                assert!(Instant::now() < deadline, "no refusal within 60 s: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    drop(h);
    let _ = rt.block_on(session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[]));
}
