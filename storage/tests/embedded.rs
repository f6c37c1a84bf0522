//! Embedded backend only: what its on-disk layout promises beyond the shared suite (suite.rs).

use corecast_storage::*;
use std::path::Path;
use std::sync::mpsc;

fn open_in(dir: &Path) -> StoreHandle {
    open(&StoreConfig::Embedded {
        data_dir: dir.to_path_buf(),
    })
    .expect("open the embedded store")
}

fn message(group: u64, sender: u64, n: u64, key: Option<String>) -> NewMessage {
    let ms = ID_EPOCH_MS + 1_000_000 + n as i64;
    NewMessage {
        id: MessageId::new(ms, 1, 0),
        group: GroupId(group),
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
            let m = message(7, 1, n, Some(format!("key-{n}")));
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
        let first = message(7, 1, 0, None).id.0 as i64;
        c.execute("INSERT INTO reads VALUES (7, ?1, 2)", [first])
            .unwrap();
    }
    let store = open_in(dir.path());
    let s = store.blocking();
    let history = s.history(GroupId(7), 10, None).unwrap();
    let texts: Vec<&str> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        [2, 1, 0].map(|n| message(7, 1, n, None).text).to_vec(),
        "every message, newest first"
    );
    assert_eq!(history[2].read_by, vec![UserId(2)]);
    let again = s
        .append_message(message(7, 1, 9, Some("key-1".into())), vec![])
        .unwrap();
    assert!(
        again.duplicate,
        "the idempotency key survived the conversion"
    );
    assert_eq!(again.message.id, message(7, 1, 1, None).id);
    assert!(
        !s.append_message(message(7, 1, 10, None), vec![])
            .unwrap()
            .duplicate
    );
    assert_eq!(s.history(GroupId(7), 10, None).unwrap().len(), 4);
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
                message: message(sent % 100, sent % 1000, sent, Some(format!("k{sent}"))),
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
