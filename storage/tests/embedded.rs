//! Embedded backend only: what its on-disk layout promises beyond the shared suite (suite.rs).

use corecast_storage::*;
use std::path::Path;
use std::sync::mpsc;

fn open_in(dir: &Path) -> StoreHandle {
    open(&Backend::embedded(dir)).expect("open the embedded store")
}

fn message(group: &str, sender: u64, n: u64, key: Option<String>) -> NewMessage {
    let ms = ID_EPOCH_MS + 1_000_000 + n as i64;
    NewMessage {
        id: MessageId::new(ms, 1, 0),
        group: GroupId::new(group),
        sender: UserId(sender),
        text: format!("message number {n}, long enough to look like a line of chat"),
        attachments: vec![],
        timestamp: ms,
        client_msg_id: key,
    }
}

/// A data folder written by the first layout (messages clustered by group in a `WITHOUT
/// ROWID` table) opens with every message, its read receipts and its idempotency key intact.
#[test]
fn data_folder_of_the_first_layout_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = rusqlite::Connection::open(embedded::db_path(dir.path())).unwrap();
        c.execute_batch(
            "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL;
             CREATE TABLE groups (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
             CREATE TABLE members (group_id INTEGER NOT NULL, user_id INTEGER NOT NULL,
                 PRIMARY KEY (group_id, user_id)) WITHOUT ROWID;
             CREATE TABLE messages (
                 group_id INTEGER NOT NULL, id INTEGER NOT NULL, sender INTEGER NOT NULL,
                 text TEXT NOT NULL, attachments TEXT NOT NULL, ts INTEGER NOT NULL,
                 client_msg_id TEXT, PRIMARY KEY (group_id, id)) WITHOUT ROWID;
             CREATE UNIQUE INDEX messages_by_client_id
                 ON messages (group_id, sender, client_msg_id) WHERE client_msg_id IS NOT NULL;
             CREATE TABLE reads (group_id INTEGER NOT NULL, message_id INTEGER NOT NULL,
                 user_id INTEGER NOT NULL, PRIMARY KEY (group_id, message_id, user_id))
                 WITHOUT ROWID;
             INSERT INTO groups VALUES (7, 'seven');
             INSERT INTO members VALUES (7, 1), (7, 2);",
        )
        .unwrap();
        for n in 0..3u64 {
            let m = message("7", 1, n, Some(format!("key-{n}")));
            c.execute(
                "INSERT INTO messages VALUES (?1, ?2, ?3, ?4, '[]', ?5, ?6)",
                rusqlite::params![
                    7i64,
                    m.id.0 as i64,
                    1i64,
                    m.text,
                    m.timestamp,
                    m.client_msg_id
                ],
            )
            .unwrap();
        }
        let first = message("7", 1, 0, None).id.0 as i64;
        c.execute("INSERT INTO reads VALUES (7, ?1, 2)", [first])
            .unwrap();
    }
    let store = open_in(dir.path());
    let s = store.blocking();
    let history = s.history(GroupId::new("7"), 10, None).unwrap();
    let texts: Vec<&str> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        [2, 1, 0].map(|n| message("7", 1, n, None).text).to_vec(),
        "every message, newest first"
    );
    assert_eq!(history[2].read_by, vec![UserId(1), UserId(2)]);
    let again = s
        .append_message(message("7", 1, 9, Some("key-1".into())), vec![])
        .unwrap();
    assert!(
        again.duplicate,
        "the idempotency key survived the conversion"
    );
    assert_eq!(again.message.id, message("7", 1, 1, None).id);
    assert!(
        !s.append_message(message("7", 1, 10, None), vec![])
            .unwrap()
            .duplicate
    );
    assert_eq!(s.history(GroupId::new("7"), 10, None).unwrap().len(), 4);
}

/// Under steady writes the write-ahead log starts over instead of growing with everything
/// written (it reached 370 MB within a minute at 10,000 messages/s before the writer helped
/// checkpoint).
#[test]
fn write_ahead_log_stays_bounded_under_steady_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path());
    let wal = dir.path().join("corecast.sqlite3-wal");
    let (tx, rx) = mpsc::channel();
    let total = 60_000u64;
    let in_flight = 64u64;
    let (mut sent, mut done, mut largest) = (0u64, 0u64, 0u64);
    while done < total {
        while sent < total && sent - done < in_flight {
            let tx = tx.clone();
            store.submit(Request::AppendMessage {
                message: message(
                    &(sent % 100).to_string(),
                    sent % 1000,
                    sent,
                    Some(format!("k{sent}")),
                ),
                notify: vec![],
                reply: Box::new(move |r| {
                    let _ = tx.send(r.map(|_| ()));
                }),
            });
            sent += 1;
        }
        rx.recv().unwrap().expect("append");
        done += 1;
        if done % 1000 == 0 {
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
    }
    let db = std::fs::metadata(embedded::db_path(dir.path()))
        .unwrap()
        .len();
    assert!(
        largest < 40 << 20,
        "the log reached {} MB while writing {total} messages (database {} MB)",
        largest >> 20,
        db >> 20
    );
}

/// The schema of data folders written while group ids were integers.
const INTEGER_ID_SCHEMA: &str = "
PRAGMA page_size = 1024; PRAGMA journal_mode = WAL;
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY,
    group_id INTEGER NOT NULL, id INTEGER NOT NULL, sender INTEGER NOT NULL,
    text TEXT NOT NULL, attachments TEXT NOT NULL, ts INTEGER NOT NULL, client_msg_id TEXT);
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, name TEXT);
CREATE TABLE groups (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE members (group_id INTEGER NOT NULL, user_id INTEGER NOT NULL,
    PRIMARY KEY (group_id, user_id)) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id, group_id);
CREATE UNIQUE INDEX messages_by_group ON messages (group_id, id);
CREATE UNIQUE INDEX messages_by_client_id
    ON messages (group_id, sender, client_msg_id) WHERE client_msg_id IS NOT NULL;
CREATE TABLE reads (group_id INTEGER NOT NULL, message_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL, PRIMARY KEY (group_id, message_id, user_id)) WITHOUT ROWID;
CREATE TABLE presence (user_id INTEGER PRIMARY KEY, online INTEGER NOT NULL,
    last_seen INTEGER NOT NULL);
CREATE TABLE notices (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL,
    group_id INTEGER NOT NULL, message_id INTEGER NOT NULL, created INTEGER NOT NULL);
CREATE TABLE failed_notices (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL,
    group_id INTEGER NOT NULL, message_id INTEGER NOT NULL, created INTEGER NOT NULL,
    reason TEXT NOT NULL, failed_at INTEGER NOT NULL);
";

/// A data folder written while group ids were integers opens with every group, member,
/// message, read receipt, idempotency key and notice, each group id now its decimal string;
/// notice ids go on after the highest ever handed out.
#[test]
fn data_folder_with_integer_group_ids_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let m = |n| message("7", 1, n, Some(format!("key-{n}")));
    {
        let c = rusqlite::Connection::open(embedded::db_path(dir.path())).unwrap();
        c.execute_batch(INTEGER_ID_SCHEMA).unwrap();
        c.execute_batch(
            "INSERT INTO users VALUES (1, 'a@example.com', 'Ada'), (2, NULL, 'Bo');
             INSERT INTO groups VALUES (7, 'seven'), (10, 'ten');
             INSERT INTO members VALUES (7, 1), (7, 2), (10, 2);
             INSERT INTO presence VALUES (2, 0, 1234);",
        )
        .unwrap();
        for n in 0..3u64 {
            let m = m(n);
            c.execute(
                "INSERT INTO messages (group_id, id, sender, text, attachments, ts, client_msg_id)
                 VALUES (7, ?1, 1, ?2, '[]', ?3, ?4)",
                rusqlite::params![m.id.0 as i64, m.text, m.timestamp, m.client_msg_id],
            )
            .unwrap();
        }
        let (first, last) = (m(0).id.0 as i64, m(2).id.0 as i64);
        c.execute("INSERT INTO reads VALUES (7, ?1, 2)", [first])
            .unwrap();
        // Notices 1 to 3 handed out; 3 was sent and deleted, 1 failed.
        for _ in 0..3 {
            c.execute(
                "INSERT INTO notices (user_id, group_id, message_id, created) VALUES (2, 7, ?1, 5)",
                [last],
            )
            .unwrap();
        }
        c.execute_batch(
            "DELETE FROM notices WHERE id = 3;
             INSERT INTO failed_notices SELECT id, user_id, group_id, message_id, created,
                 'bounced', 9 FROM notices WHERE id = 1;
             DELETE FROM notices WHERE id = 1;",
        )
        .unwrap();
    }
    let store = open_in(dir.path());
    let s = store.blocking();
    let seven = GroupId::new("7");
    let g = s.get_group(seven.clone()).unwrap().unwrap();
    assert_eq!(
        (g.name.as_str(), g.members),
        ("seven", vec![UserId(1), UserId(2)])
    );
    assert_eq!(
        s.groups_of_user(UserId(2)).unwrap(),
        vec![GroupId::new("10"), seven.clone()]
    );
    let history = s.history(seven.clone(), 10, None).unwrap();
    assert_eq!(history.len(), 3);
    assert!(history.iter().all(|h| h.group == seven));
    assert_eq!(history[2].read_by, vec![UserId(1), UserId(2)]);
    assert_eq!(history[0].read_by, vec![UserId(1)]);
    let again = s
        .append_message(message("7", 1, 9, Some("key-1".into())), vec![])
        .unwrap();
    assert!(again.duplicate, "the idempotency key survived");
    assert_eq!(again.message.id, m(1).id);
    let pending = s.pending_notices(10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].id, &pending[0].group), (NoticeId(2), &seven));
    assert_eq!(s.failed_notice_count().unwrap(), 1);
    assert_eq!(s.get_presence(UserId(2)).unwrap().unwrap().last_seen, 1234);
    // A new notice never reuses the id of one already sent.
    s.append_message(message("7", 1, 20, None), vec![UserId(2)])
        .unwrap();
    let ids: Vec<NoticeId> = s
        .pending_notices(10)
        .unwrap()
        .iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, vec![NoticeId(2), NoticeId(4)]);
    // Strings now: "007" is another group than "7".
    s.put_group(Group {
        id: GroupId::new("007"),
        name: "double-oh".into(),
        members: vec![UserId(1)],
    })
    .unwrap();
    assert_eq!(s.get_group(seven.clone()).unwrap().unwrap().name, "seven");
    assert_eq!(s.history(GroupId::new("007"), 10, None).unwrap(), vec![]);
    drop(store);
    // Reopening finds the conversion done and changes nothing.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let store = open_in(dir.path());
    assert_eq!(store.blocking().history(seven, 10, None).unwrap().len(), 4);
    let c = rusqlite::Connection::open(embedded::db_path(dir.path())).unwrap();
    let integer_columns: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master m, pragma_table_info(m.name) p
             WHERE m.type = 'table' AND p.name IN ('group_id') AND upper(p.type) = 'INTEGER'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(integer_columns, 0);
}
