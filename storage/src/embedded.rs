//! The embedded backend: SQLite (through rusqlite, built in) in a local data folder.
//!
//! Why SQLite: it is the most widely deployed and tested embedded database, its write-ahead log
//! gives durable commits with one fsync each, and several processes may open the same file, so
//! the notifier process reads the outbox that the gateway writes without a server in between.
//!
//! One writer thread owns the connection. It takes everything queued since its last commit (up
//! to [`Options::max_batch`] requests), applies them in one transaction, each request inside its
//! own savepoint so one failure does not undo the others, commits (fsync, `synchronous=FULL`),
//! and only then calls the replies: group commit. A reply therefore always means durable.

use crate::error::Error;
use crate::model::*;
use crate::request::{Request, StoreHandle};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Tuning of the embedded backend.
#[derive(Debug, Clone)]
pub struct Options {
    /// Requests the queue holds before [`StoreHandle::submit`] answers `Overloaded`.
    pub queue_capacity: usize,
    /// Requests applied in one transaction at most.
    pub max_batch: usize,
    /// How long a write may wait in the store on average, its commit included, so that its
    /// commit (one fsync, each touched page written once) is shared with the writes that come
    /// soon after it. The writer paces its commits to this (see [`Pacer`]): at ordinary load
    /// each write commits at once, at moderate rates commits start at most every
    /// `2 × (commit_budget − commit time)`, and past that they run back to back, each taking
    /// everything queued meanwhile. Fewer commits cost less CPU per message; a shorter budget
    /// answers sooner (measured in docs/benchmarks.md, "Pacing group commit"). Zero commits as
    /// soon as the queue is empty.
    pub commit_budget: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            queue_capacity: 65_536,
            max_batch: 4_096,
            commit_budget: Duration::from_micros(800),
        }
    }
}

/// The database file inside a data folder.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("corecast.sqlite3")
}

/// Messages are kept in arrival order (`seq`, the rowid), so a batch of new messages fills the
/// last page of the table instead of one page per group, and the two indexes hold only short
/// keys: each message adds one small entry to a page of each, and pages rarely split. (Clustering
/// the rows by group, as the first layout did, split a 1 KiB page every few messages and wrote
/// about six pages per message; docs/benchmarks.md.)
///
/// Group ids are `TEXT` everywhere: with `INTEGER` affinity SQLite would turn the text `"007"`
/// into the number 7.
const MESSAGES_TABLE: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    group_id TEXT NOT NULL, id INTEGER NOT NULL, sender INTEGER NOT NULL,
    text TEXT NOT NULL, attachments TEXT NOT NULL, ts INTEGER NOT NULL, client_msg_id TEXT);
";

/// The tables that hold a group id, each with its `CREATE` statement and the column; the
/// migration from integer ids ([`migrate_group_ids`]) rebuilds each from its statement here.
const GROUP_TABLES: [(&str, &str, &str); 7] = [
    (
        "groups",
        "id",
        "CREATE TABLE IF NOT EXISTS groups (id TEXT PRIMARY KEY, name TEXT NOT NULL)",
    ),
    (
        "members",
        "group_id",
        "CREATE TABLE IF NOT EXISTS members (
            group_id TEXT NOT NULL, user_id INTEGER NOT NULL,
            PRIMARY KEY (group_id, user_id)) WITHOUT ROWID",
    ),
    ("messages", "group_id", MESSAGES_TABLE),
    (
        "reads",
        "group_id",
        "CREATE TABLE IF NOT EXISTS reads (
            group_id TEXT NOT NULL, message_id INTEGER NOT NULL, user_id INTEGER NOT NULL,
            PRIMARY KEY (group_id, message_id, user_id)) WITHOUT ROWID",
    ),
    (
        "read_events",
        "group_id",
        "CREATE TABLE IF NOT EXISTS read_events (
            group_id TEXT NOT NULL, id INTEGER NOT NULL, message_id INTEGER NOT NULL,
            user_id INTEGER NOT NULL, PRIMARY KEY (group_id, id)) WITHOUT ROWID",
    ),
    (
        "notices",
        "group_id",
        "CREATE TABLE IF NOT EXISTS notices (
            id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL, group_id TEXT NOT NULL,
            message_id INTEGER NOT NULL, created INTEGER NOT NULL)",
    ),
    (
        "failed_notices",
        "group_id",
        "CREATE TABLE IF NOT EXISTS failed_notices (
            id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, group_id TEXT NOT NULL,
            message_id INTEGER NOT NULL, created INTEGER NOT NULL, reason TEXT NOT NULL,
            failed_at INTEGER NOT NULL)",
    ),
];

/// Everything else: the tables without a group id, and the indexes (created after the tables
/// they index, and after a migration has dropped the old ones).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY, email TEXT, name TEXT);
CREATE INDEX IF NOT EXISTS members_by_user ON members (user_id, group_id);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_group ON messages (group_id, id);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_id
    ON messages (group_id, sender, client_msg_id) WHERE client_msg_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS presence (
    user_id INTEGER PRIMARY KEY, online INTEGER NOT NULL, last_seen INTEGER NOT NULL);
";

/// Opens (creating if needed) the database in `data_dir` with the schema applied.
/// Used by the writer thread and by other processes that read the same file (the notifier).
pub fn connect(data_dir: &Path) -> Result<Connection, Error> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        Error::Unavailable(format!(
            "cannot create data folder {}: {e}",
            data_dir.display()
        ))
    })?;
    let path = db_path(data_dir);
    // Before anything initializes SQLite in this process: the page cache without a whole-cache
    // walk after b-tree splits (page_cache.rs).
    crate::page_cache::install();
    // Through the layer that writes each commit's log pages with one call (wal_vfs.rs).
    crate::wal_vfs::register().map_err(Error::Unavailable)?;
    let conn = Connection::open_with_flags_and_vfs(
        &path,
        rusqlite::OpenFlags::default(),
        crate::wal_vfs::NAME,
    )
    .map_err(|e| Error::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(unavailable)?;
    // Room for every statement this module runs (about 30), so none is parsed twice.
    conn.set_prepared_statement_cache_capacity(64);
    // Small pages: every commit writes each page it touched to the log in full, and a batch
    // of messages touches one page per group (and per index); 1 KiB pages write a quarter of
    // what the default 4 KiB pages do. Takes effect when the database is created.
    conn.pragma_update(None, "page_size", 1024)
        .map_err(unavailable)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(unavailable)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(unavailable)?;
    // 64 MiB of page cache keeps the hot index pages in memory.
    conn.pragma_update(None, "cache_size", -65_536)
        .map_err(unavailable)?;
    migrate_messages(&conn).map_err(unavailable)?;
    migrate_group_ids(&conn).map_err(|e| {
        Error::Unavailable(format!(
            "cannot convert the data folder {} to string group ids: {e}; nothing was changed. \
             Back the folder up, free disk space if that was the cause, and start again",
            data_dir.display()
        ))
    })?;
    for (_, _, create) in GROUP_TABLES {
        conn.execute_batch(create).map_err(unavailable)?;
    }
    conn.execute_batch(SCHEMA).map_err(unavailable)?;
    Ok(conn)
}

/// Converts a data folder written while group ids were integers to string ids, once, in one
/// transaction: each table whose group id column is declared `INTEGER` is rebuilt with a `TEXT`
/// column, and every id becomes its decimal string (group 7 becomes `"7"`; clients that sent
/// the number 7 or the string "7" find it). Whichever process opens the folder first does it;
/// the other finds it done. Notice ids go on from where they were, so that no email reuses the
/// Message-ID of one already sent.
fn migrate_group_ids(conn: &Connection) -> rusqlite::Result<()> {
    let integer_tables = |c: &Connection| -> rusqlite::Result<Vec<usize>> {
        let mut out = Vec::new();
        for (i, (table, column, _)) in GROUP_TABLES.iter().enumerate() {
            let integer: bool = query_row(
                c,
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1)
                 WHERE name = ?2 AND upper(type) = 'INTEGER')",
                params![table, column],
                |r| r.get(0),
            )?;
            if integer {
                out.push(i);
            }
        }
        Ok(out)
    };
    if integer_tables(conn)?.is_empty() {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let outcome = (|| {
        for i in integer_tables(conn)? {
            let (table, _, create) = GROUP_TABLES[i];
            let old = format!("{table}_integer_ids");
            // The old table's indexes go with it when it is dropped; SCHEMA then creates them
            // on the new one.
            conn.execute_batch(&format!("ALTER TABLE {table} RENAME TO {old}"))?;
            conn.execute_batch(create)?;
            let columns: Vec<String> = {
                let mut st =
                    conn.prepare(&format!("SELECT name FROM pragma_table_info('{old}')"))?;
                let names = st.query_map([], |r| r.get::<_, String>(0))?;
                names.collect::<rusqlite::Result<_>>()?
            };
            let columns = columns.join(", ");
            // TEXT affinity stores each integer id as its decimal string.
            conn.execute_batch(&format!(
                "INSERT INTO {table} ({columns}) SELECT {columns} FROM {old}"
            ))?;
            if table == "notices" {
                conn.execute_batch(
                    "INSERT INTO sqlite_sequence (name, seq) SELECT 'notices', 0
                     WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'notices');
                     UPDATE sqlite_sequence SET seq = max(seq, coalesce(
                         (SELECT seq FROM sqlite_sequence WHERE name = 'notices_integer_ids'), 0))
                     WHERE name = 'notices';",
                )?;
            }
            conn.execute_batch(&format!("DROP TABLE {old}"))?;
        }
        Ok(())
    })();
    match outcome {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Converts a data folder written with the first layout (a `WITHOUT ROWID` messages table
/// clustered by group) to [`MESSAGES_TABLE`], once, in one transaction. Whichever process
/// (gateway or notifier) opens the folder first does it; the other finds it done.
fn migrate_messages(conn: &Connection) -> rusqlite::Result<()> {
    let old_layout = |c: &Connection| -> rusqlite::Result<bool> {
        query_row(
            c,
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages')
             AND NOT EXISTS (SELECT 1 FROM pragma_table_info('messages') WHERE name = 'seq')",
            [],
            |r| r.get(0),
        )
    };
    if !old_layout(conn)? {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let outcome = (|| {
        if !old_layout(conn)? {
            return Ok(());
        }
        conn.execute_batch(
            "ALTER TABLE messages RENAME TO messages_by_group_v0;
             DROP INDEX IF EXISTS messages_by_client_id;",
        )?;
        conn.execute_batch(MESSAGES_TABLE)?;
        conn.execute_batch(
            "INSERT INTO messages (group_id, id, sender, text, attachments, ts, client_msg_id)
             SELECT group_id, id, sender, text, attachments, ts, client_msg_id
             FROM messages_by_group_v0 ORDER BY id;
             DROP TABLE messages_by_group_v0;",
        )
    })();
    match outcome {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Bytes SQLite has allocated in this process (its page caches, at most 64 MiB per connection,
/// and its statements): the share of the process's memory that follows the database's size up
/// to that bound rather than the connections'.
pub fn memory_used() -> u64 {
    // SAFETY: sqlite3_memory_used has no preconditions and is thread-safe.
    let n = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    n.max(0) as u64
}

/// Opens the store in `data_dir` and starts its writer thread.
pub fn open(data_dir: &Path, options: Options) -> Result<StoreHandle, Error> {
    let mut conn = connect(data_dir)?;
    // Checkpoints (copying the write-ahead log into the database file) run on a thread of
    // their own, so the writer seldom stalls on one while requests wait. But the log only
    // starts over from its beginning when a write finds it entirely copied, which a checkpoint
    // running beside a busy writer never achieves: under steady load the log grew without
    // bound (370 MB after a minute at 10,000 messages/s) and every lookup in it slowed. So once
    // the log passes WAL_RESET_PAGES the writer also checkpoints after its commit; the other
    // thread, passing often as the log nears that size, has copied nearly everything by then,
    // so this copies only the last few batches, and the next write starts the log over
    // (`after_commit`).
    let log = Arc::new(LogWatch {
        pages: AtomicI64::new(0),
        checkpointer: std::sync::OnceLock::new(),
    });
    // In place of SQLite's automatic checkpoint (also a write-ahead log hook).
    let hook_log = log.clone();
    conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages| {
        after_commit(&hook_log, wal, i64::from(pages));
        Ok(())
    }))
    .map_err(unavailable)?;
    let checkpoints = connect(data_dir)?;
    let (tx, rx) = crossbeam_channel::bounded::<Request>(options.queue_capacity);
    let watch = Arc::downgrade(&log);
    std::thread::Builder::new()
        .name("store-embedded".into())
        .spawn(move || {
            // The hook (holding `log`) goes with the connection when the writer ends, and
            // with it the checkpoint thread.
            writer(conn, rx, options.max_batch, options.commit_budget)
        })
        .map_err(|e| Error::Unavailable(format!("cannot start the store thread: {e}")))?;
    let thread = std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || checkpointer(checkpoints, watch))
        .map_err(|e| Error::Unavailable(format!("cannot start the checkpoint thread: {e}")))?;
    let _ = log.checkpointer.set(thread.thread().clone());
    drop(log);
    Ok(StoreHandle::new(tx, "embedded"))
}

/// Log size (in 1 KiB pages) past which the writer checkpoints after a commit, so that the
/// log starts over (see [`open`]).
const WAL_RESET_PAGES: i64 = 16_384;

/// Log size past which the checkpoint thread passes every [`CATCH_UP_EVERY`] instead of every
/// [`CHECKPOINT_EVERY`], so that the writer's checkpoint at [`WAL_RESET_PAGES`] finds little
/// left to copy.
const CATCH_UP_PAGES: i64 = WAL_RESET_PAGES * 3 / 4;

/// How often the checkpoint thread copies the log into the database while the log is short.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// How often it does while the log nears [`WAL_RESET_PAGES`].
const CATCH_UP_EVERY: Duration = Duration::from_millis(5);

/// The log's size after the writer's last commit, and the checkpoint thread to wake when it
/// nears a reset.
struct LogWatch {
    pages: AtomicI64,
    checkpointer: std::sync::OnceLock<std::thread::Thread>,
}

/// What the writer's hook does after a commit (see [`LogWatch::committed`]).
#[derive(Debug, PartialEq, Eq)]
struct AfterCommit {
    /// Wake the checkpoint thread: the log just crossed [`CATCH_UP_PAGES`].
    wake: bool,
    /// Checkpoint now, so that the next write starts the log over.
    checkpoint: bool,
}

impl LogWatch {
    /// Records the log's size after a commit (`pages`) and says what to do: wake the
    /// checkpoint thread once as the log crosses [`CATCH_UP_PAGES`], and checkpoint after each
    /// commit past [`WAL_RESET_PAGES`] until the log starts over.
    fn committed(&self, pages: i64) -> AfterCommit {
        let before = self.pages.swap(pages, Relaxed);
        AfterCommit {
            wake: pages >= CATCH_UP_PAGES && before < CATCH_UP_PAGES,
            checkpoint: pages >= WAL_RESET_PAGES,
        }
    }
}

/// The writer's write-ahead log hook, called after each of its commits with the log's size.
///
/// Its checkpoint is passive (it gives way to a pass already running; the next commit tries
/// again). When the checkpoint thread passed only every 500 ms, it copied up to 500 ms of
/// batches (thousands of pages) and synced them while requests waited: stalls of 10–20 ms
/// several times a second at 10,000 messages/s, which set the gateway's p99
/// (docs/benchmarks.md). Now the thread has passed within the last few milliseconds.
fn after_commit(watch: &LogWatch, wal: &mut rusqlite::hooks::Wal, pages: i64) {
    let next = watch.committed(pages);
    if next.wake {
        if let Some(t) = watch.checkpointer.get() {
            t.unpark();
        }
    }
    if next.checkpoint {
        // An error returned from the hook would fail a commit that has already happened.
        if let Err(e) = wal.checkpoint() {
            tracing::debug!(error = %e, "embedded store: writer's checkpoint did not run");
        }
    }
}

/// Copies the write-ahead log into the database file in the background (PASSIVE: never
/// waits for, nor blocks, the writer), until the writer thread is gone: every
/// [`CHECKPOINT_EVERY`], and every [`CATCH_UP_EVERY`] while the log nears a reset.
fn checkpointer(conn: Connection, watch: std::sync::Weak<LogWatch>) {
    // Whether the last pass left pages uncopied: an idle writer's long log, once copied,
    // needs no more passes until the writer writes again (and starts it over).
    let mut behind = false;
    loop {
        let Some(w) = watch.upgrade() else { return };
        let catching_up = behind && w.pages.load(Relaxed) >= CATCH_UP_PAGES;
        drop(w);
        if catching_up {
            std::thread::sleep(CATCH_UP_EVERY);
        } else {
            std::thread::park_timeout(CHECKPOINT_EVERY);
        }
        // (busy, pages in the log, pages of it copied into the database)
        let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        behind = match pass {
            Ok((log, copied)) => copied < log,
            Err(e) => {
                tracing::warn!(error = %e, "embedded store: checkpoint failed");
                false
            }
        };
    }
}

fn unavailable(e: rusqlite::Error) -> Error {
    Error::Unavailable(e.to_string())
}

/// What to do with a request's reply once the batch's fate is known: `true` if it committed.
type Finish = Box<dyn FnOnce(bool) + Send>;

/// When the writer starts its commits (see [`Options::commit_budget`]).
///
/// A write arriving at a random moment while commits start every `period` waits on average
/// half a period for the next one to start, then the commit itself: `period / 2 + commit`.
/// So the pacer spaces commit starts by `period = 2 × (budget − commit)`, from the running
/// mean of the last commits' durations, which spends the budget on grouping and no more. A
/// write that finds the last commit started longer ago than that commits at once, which is
/// every write at ordinary load; when commits take longer than the budget, the period is zero
/// and they run back to back, each carrying what queued during the one before.
#[derive(Debug)]
struct Pacer {
    budget: Duration,
    /// Running mean of the commits' durations (1/8 weight on the newest).
    commit: Duration,
    last_start: Option<std::time::Instant>,
}

impl Pacer {
    fn new(budget: Duration) -> Self {
        Pacer {
            budget,
            commit: Duration::ZERO,
            last_start: None,
        }
    }

    /// The spacing of commit starts the budget allows now.
    fn period(&self) -> Duration {
        self.budget.saturating_sub(self.commit) * 2
    }

    /// How long to wait before a commit that would start at `now`.
    fn wait(&self, now: std::time::Instant) -> Duration {
        match self.last_start {
            Some(last) => self
                .period()
                .saturating_sub(now.saturating_duration_since(last)),
            None => Duration::ZERO,
        }
    }

    /// Records a commit that started at `start` and ended at `end`.
    fn committed(&mut self, start: std::time::Instant, end: std::time::Instant) {
        let took = end.saturating_duration_since(start);
        self.commit = (self.commit * 7 + took) / 8;
        self.last_start = Some(start);
    }
}

fn writer(
    conn: Connection,
    rx: crossbeam_channel::Receiver<Request>,
    max_batch: usize,
    budget: Duration,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut pacer = Pacer::new(budget);
    while let Ok(first) = rx.recv() {
        // Wait for more work when there is something to commit and the pacer says the last
        // commit started too recently: one commit (one fsync, each touched page written once)
        // then carries several writes instead of one each. Reads alone need no fsync and are
        // answered at once. The thread sleeps through the wait rather than waiting on the
        // queue: a request arriving meanwhile then wakes nobody, and the batch is collected
        // afterwards (waking this thread once per request cost ~2 µs of gateway CPU per
        // delivery at 30,000/s; docs/benchmarks.md).
        if first.is_write() {
            let wait = pacer.wait(std::time::Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        first.flatten(&mut batch);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => r.flatten(&mut batch),
                Err(_) => break,
            }
        }
        let start = std::time::Instant::now();
        let any_write = batch.iter().any(Request::is_write);
        let mut finishes: Vec<Finish> = Vec::with_capacity(batch.len());
        // BEGIN, COMMIT and the savepoints run as cached statements: parsing them again for
        // every batch and request was a visible share of the store's CPU.
        let run = |sql: &str| execute(&conn, sql, []);
        let outcome = (|| -> rusqlite::Result<()> {
            run(if any_write {
                "BEGIN IMMEDIATE"
            } else {
                "BEGIN"
            })?;
            for req in batch.drain(..) {
                finishes.push(apply_isolated(&conn, req));
            }
            if let Err(e) = run("COMMIT") {
                let _ = run("ROLLBACK");
                return Err(e);
            }
            Ok(())
        })();
        if any_write {
            pacer.committed(start, std::time::Instant::now());
        }
        let committed = match outcome {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "embedded store: batch commit failed");
                false
            }
        };
        // Requests never reached because the transaction could not start are failed here.
        for req in batch.drain(..) {
            req.fail(Error::Unavailable(
                "the embedded store could not start a transaction".into(),
            ));
        }
        for finish in finishes {
            finish(committed);
        }
    }
}

/// Applies one request inside a savepoint so that its failure leaves the rest of the batch.
fn apply_isolated(conn: &Connection, req: Request) -> Finish {
    let savepoint = |sql: &str| execute(conn, sql, []);
    if let Err(e) = savepoint("SAVEPOINT req") {
        let msg = e.to_string();
        req.fail(Error::Unavailable(msg));
        return Box::new(|_| {});
    }
    let (ok, finish) = apply(conn, req);
    let end = if ok {
        savepoint("RELEASE req")
    } else {
        savepoint("ROLLBACK TO req").and_then(|_| savepoint("RELEASE req"))
    };
    if let Err(e) = end {
        tracing::error!(error = %e, "embedded store: savepoint end failed");
    }
    finish
}

/// Builds the finish closure for a result: reads answer as they are, writes only if committed.
fn done<T: Send + 'static>(
    reply: crate::Reply<T>,
    write: bool,
    result: Result<T, Error>,
) -> (bool, Finish) {
    let ok = result.is_ok();
    (
        ok,
        Box::new(move |committed| {
            if write && !committed && result.is_ok() {
                reply(Err(Error::Unavailable(
                    "the embedded store could not commit".into(),
                )))
            } else {
                reply(result)
            }
        }),
    )
}

/// `Connection::query_row` through the statement cache: the store runs the same few statements
/// for every request, and parsing and planning them again each time was a tenth of its CPU.
fn query_row<T, P: rusqlite::Params>(
    c: &Connection,
    sql: &str,
    params: P,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(params, f)
}

/// `Connection::execute` through the statement cache (see [`query_row`]).
fn execute<P: rusqlite::Params>(c: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(params)
}

fn sql<T>(r: rusqlite::Result<T>) -> Result<T, Error> {
    r.map_err(unavailable)
}

fn apply(c: &Connection, req: Request) -> (bool, Finish) {
    match req {
        Request::PutUser { user, reply } => done(reply, true, put_user(c, &user)),
        Request::GetUser { user, reply } => done(reply, false, get_user(c, user)),
        Request::PutGroup { group, reply } => done(reply, true, put_group(c, &group)),
        Request::GetGroup { group, reply } => done(reply, false, get_group(c, group)),
        Request::AddMember { group, user, reply } => done(reply, true, add_member(c, group, user)),
        Request::RemoveMember { group, user, reply } => {
            let r = sql(execute(
                c,
                "DELETE FROM members WHERE group_id = ?1 AND user_id = ?2",
                params![group.as_str(), user.0 as i64],
            ))
            .map(|n| n > 0);
            done(reply, true, r)
        }
        Request::GroupsOfUser { user, reply } => done(reply, false, groups_of_user(c, user)),
        Request::GroupsOfUsers { users, reply } => {
            let r = users.into_iter().map(|u| groups_of_user(c, u)).collect();
            done(reply, false, r)
        }
        Request::AppendMessage {
            message,
            notify,
            reply,
        } => done(reply, true, append_message(c, message, &notify)),
        Request::MarkRead {
            group,
            message,
            user,
            event,
            reply,
        } => done(reply, true, mark_read(c, group, message, user, event)),
        Request::GetMessage {
            group,
            message,
            reply,
        } => done(reply, false, get_message(c, &group, message)),
        Request::History {
            group,
            limit,
            before,
            reply,
        } => done(reply, false, history(c, &group, limit, before)),
        Request::Since {
            group,
            after,
            upto,
            limit,
            reply,
        } => done(reply, false, since(c, &group, after, upto, limit)),
        Request::SetPresence {
            user,
            online,
            at,
            reply,
        } => {
            let r = sql(execute(
                c,
                "INSERT INTO presence (user_id, online, last_seen) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id) DO UPDATE SET online = excluded.online,
                 last_seen = excluded.last_seen",
                params![user.0 as i64, online, at],
            ))
            .map(|_| ());
            done(reply, true, r)
        }
        Request::GetPresence { user, reply } => {
            let r = sql(query_row(
                c,
                "SELECT online, last_seen FROM presence WHERE user_id = ?1",
                params![user.0 as i64],
                |row| {
                    Ok(Presence {
                        online: row.get(0)?,
                        last_seen: row.get(1)?,
                    })
                },
            )
            .optional());
            done(reply, false, r)
        }
        Request::PendingNotices { limit, reply } => done(reply, false, pending_notices(c, limit)),
        Request::DeleteNotices { ids, reply } => {
            let r = (|| {
                let mut st = sql(c.prepare_cached("DELETE FROM notices WHERE id = ?1"))?;
                for id in ids {
                    sql(st.execute(params![id.0 as i64]))?;
                }
                Ok(())
            })();
            done(reply, true, r)
        }
        Request::FailNotices { ids, reason, reply } => {
            let r = (|| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let mut copy = sql(c.prepare_cached(
                    "INSERT OR REPLACE INTO failed_notices
                     (id, user_id, group_id, message_id, created, reason, failed_at)
                     SELECT id, user_id, group_id, message_id, created, ?2, ?3
                     FROM notices WHERE id = ?1",
                ))?;
                let mut del = sql(c.prepare_cached("DELETE FROM notices WHERE id = ?1"))?;
                for id in ids {
                    sql(copy.execute(params![id.0 as i64, reason, now]))?;
                    sql(del.execute(params![id.0 as i64]))?;
                }
                Ok(())
            })();
            done(reply, true, r)
        }
        Request::FailedNoticeCount { reply } => {
            let r = sql(query_row(
                c,
                "SELECT COUNT(*) FROM failed_notices",
                [],
                |r| r.get::<_, i64>(0),
            ))
            .map(|n| n as u64);
            done(reply, false, r)
        }
        Request::Batch(_) => {
            unreachable!("invariant: batches are flattened before they are applied")
        }
        Request::Ping { reply } => {
            done(reply, false, sql(query_row(c, "SELECT 1", [], |_| Ok(()))))
        }
    }
}

fn put_user(c: &Connection, user: &User) -> Result<(), Error> {
    sql(execute(
        c,
        "INSERT INTO users (id, email, name) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET email = excluded.email, name = excluded.name",
        params![user.id.0 as i64, user.email, user.name],
    ))?;
    Ok(())
}

fn get_user(c: &Connection, id: UserId) -> Result<Option<User>, Error> {
    sql(query_row(
        c,
        "SELECT email, name FROM users WHERE id = ?1",
        params![id.0 as i64],
        |row| {
            Ok(User {
                id,
                email: row.get(0)?,
                name: row.get(1)?,
            })
        },
    )
    .optional())
}

fn members_of(c: &Connection, group: &GroupId) -> Result<Vec<UserId>, Error> {
    let mut st =
        sql(c.prepare_cached("SELECT user_id FROM members WHERE group_id = ?1 ORDER BY user_id"))?;
    let rows = sql(st.query_map(params![group.as_str()], |r| r.get::<_, i64>(0)))?;
    rows.map(|r| sql(r).map(|v| UserId(v as u64))).collect()
}

fn put_group(c: &Connection, group: &Group) -> Result<MembershipChange, Error> {
    sql(execute(
        c,
        "INSERT INTO groups (id, name) VALUES (?1, ?2)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        params![group.id.as_str(), group.name],
    ))?;
    let before = members_of(c, &group.id)?;
    let (change, _) = MembershipChange::between(&before, &group.members);
    for u in &change.removed {
        sql(execute(
            c,
            "DELETE FROM members WHERE group_id = ?1 AND user_id = ?2",
            params![group.id.as_str(), u.0 as i64],
        ))?;
    }
    for u in &change.added {
        sql(execute(
            c,
            "INSERT INTO members (group_id, user_id) VALUES (?1, ?2)",
            params![group.id.as_str(), u.0 as i64],
        ))?;
    }
    Ok(change)
}

fn get_group(c: &Connection, id: GroupId) -> Result<Option<Group>, Error> {
    let name: Option<String> = sql(query_row(
        c,
        "SELECT name FROM groups WHERE id = ?1",
        params![id.as_str()],
        |r| r.get(0),
    )
    .optional())?;
    match name {
        None => Ok(None),
        Some(name) => Ok(Some(Group {
            members: members_of(c, &id)?,
            id,
            name,
        })),
    }
}

fn add_member(c: &Connection, group: GroupId, user: UserId) -> Result<bool, Error> {
    let exists: bool = sql(query_row(
        c,
        "SELECT EXISTS (SELECT 1 FROM groups WHERE id = ?1)",
        params![group.as_str()],
        |r| r.get(0),
    ))?;
    if !exists {
        return Err(Error::NoSuchGroup(group));
    }
    let n = sql(execute(
        c,
        "INSERT OR IGNORE INTO members (group_id, user_id) VALUES (?1, ?2)",
        params![group.as_str(), user.0 as i64],
    ))?;
    Ok(n > 0)
}

fn groups_of_user(c: &Connection, user: UserId) -> Result<Vec<GroupId>, Error> {
    let mut st =
        sql(c.prepare_cached("SELECT group_id FROM members WHERE user_id = ?1 ORDER BY group_id"))?;
    let rows = sql(st.query_map(params![user.0 as i64], |r| r.get::<_, String>(0)))?;
    rows.map(|r| sql(r).map(GroupId::new)).collect()
}

fn append_message(c: &Connection, m: NewMessage, notify: &[UserId]) -> Result<Appended, Error> {
    if let Some(key) = &m.client_msg_id {
        let existing: Option<i64> = sql(query_row(
            c,
            "SELECT id FROM messages
                 WHERE group_id = ?1 AND sender = ?2 AND client_msg_id = ?3",
            params![m.group.as_str(), m.sender.0 as i64, key],
            |r| r.get(0),
        )
        .optional())?;
        if let Some(id) = existing {
            let message = get_message(c, &m.group, MessageId(id as u64))?
                .expect("invariant: the id was just read from the messages table");
            return Ok(Appended {
                message,
                duplicate: true,
            });
        }
    }
    let attachments = serde_json::to_string(&m.attachments)
        .expect("invariant: attachments are plain strings and always serialize");
    let mut st = sql(c.prepare_cached(
        "INSERT INTO messages (group_id, id, sender, text, attachments, ts, client_msg_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    ))?;
    sql(st.execute(params![
        m.group.as_str(),
        m.id.0 as i64,
        m.sender.0 as i64,
        m.text,
        attachments,
        m.timestamp,
        m.client_msg_id
    ]))?;
    if !notify.is_empty() {
        let mut st = sql(c.prepare_cached(
            "INSERT INTO notices (user_id, group_id, message_id, created) VALUES (?1, ?2, ?3, ?4)",
        ))?;
        for u in notify {
            sql(st.execute(params![
                u.0 as i64,
                m.group.as_str(),
                m.id.0 as i64,
                m.timestamp
            ]))?;
        }
    }
    Ok(Appended {
        message: m.into(),
        duplicate: false,
    })
}

/// The sender of a message, if the group has it.
fn message_sender(
    c: &Connection,
    group: &GroupId,
    message: MessageId,
) -> Result<Option<UserId>, Error> {
    sql(query_row(
        c,
        "SELECT sender FROM messages WHERE group_id = ?1 AND id = ?2",
        params![group.as_str(), message.0 as i64],
        |r| r.get::<_, i64>(0),
    )
    .optional())
    .map(|s| s.map(|s| UserId(s as u64)))
}

/// Adds the reader, and keeps the receipt as event `event` of the group's stream (in the same
/// transaction: the writer commits a batch at once).
fn mark_read(
    c: &Connection,
    group: GroupId,
    message: MessageId,
    user: UserId,
    event: MessageId,
) -> Result<bool, Error> {
    match message_sender(c, &group, message)? {
        None => return Err(Error::NoSuchMessage { group, message }),
        // The sender has read it from the start (see `with_sender`): nothing to add.
        Some(sender) if sender == user => return Ok(false),
        Some(_) => {}
    }
    let n = sql(execute(
        c,
        "INSERT OR IGNORE INTO reads (group_id, message_id, user_id) VALUES (?1, ?2, ?3)",
        params![group.as_str(), message.0 as i64, user.0 as i64],
    ))?;
    if n > 0 {
        sql(execute(
            c,
            "INSERT INTO read_events (group_id, id, message_id, user_id) VALUES (?1, ?2, ?3, ?4)",
            params![
                group.as_str(),
                event.0 as i64,
                message.0 as i64,
                user.0 as i64
            ],
        ))?;
    }
    Ok(n > 0)
}

fn readers(c: &Connection, group: &GroupId, message: MessageId) -> Result<Vec<UserId>, Error> {
    let mut st = sql(c.prepare_cached(
        "SELECT user_id FROM reads WHERE group_id = ?1 AND message_id = ?2 ORDER BY user_id",
    ))?;
    let rows = sql(
        st.query_map(params![group.as_str(), message.0 as i64], |r| {
            r.get::<_, i64>(0)
        }),
    )?;
    rows.map(|r| sql(r).map(|v| UserId(v as u64))).collect()
}

fn row_to_message(group: &GroupId, row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    let attachments: String = row.get(3)?;
    Ok(StoredMessage {
        id: MessageId(row.get::<_, i64>(0)? as u64),
        group: group.clone(),
        sender: UserId(row.get::<_, i64>(1)? as u64),
        text: row.get(2)?,
        // Written by this module from valid JSON; a corrupt row reads as no attachments.
        attachments: serde_json::from_str(&attachments).unwrap_or_default(),
        timestamp: row.get(4)?,
        client_msg_id: row.get(5)?,
        read_by: Vec::new(),
    })
}

fn get_message(
    c: &Connection,
    group: &GroupId,
    message: MessageId,
) -> Result<Option<StoredMessage>, Error> {
    let m = sql(query_row(
        c,
        "SELECT id, sender, text, attachments, ts, client_msg_id FROM messages
             WHERE group_id = ?1 AND id = ?2",
        params![group.as_str(), message.0 as i64],
        |row| row_to_message(group, row),
    )
    .optional())?;
    match m {
        None => Ok(None),
        Some(mut m) => {
            m.read_by = with_sender(m.sender, readers(c, group, m.id)?);
            Ok(Some(m))
        }
    }
}

fn history(
    c: &Connection,
    group: &GroupId,
    limit: usize,
    before: Option<MessageId>,
) -> Result<Vec<StoredMessage>, Error> {
    let mut st = sql(c.prepare_cached(
        "SELECT id, sender, text, attachments, ts, client_msg_id FROM messages
         WHERE group_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
    ))?;
    let before = before.map(|m| m.0 as i64).unwrap_or(i64::MAX);
    let rows = sql(
        st.query_map(params![group.as_str(), before, limit as i64], |row| {
            row_to_message(group, row)
        }),
    )?;
    with_readers(c, group, rows)
}

fn since(
    c: &Connection,
    group: &GroupId,
    after: MessageId,
    upto: MessageId,
    limit: usize,
) -> Result<Vec<GroupEvent>, Error> {
    let bounds = params![group.as_str(), after.0 as i64, upto.0 as i64, limit as i64];
    let mut st = sql(c.prepare_cached(
        "SELECT id, sender, text, attachments, ts, client_msg_id FROM messages
         WHERE group_id = ?1 AND id > ?2 AND id <= ?3 ORDER BY id LIMIT ?4",
    ))?;
    let rows = sql(st.query_map(bounds, |row| row_to_message(group, row)))?;
    let messages = with_readers(c, group, rows)?;
    let mut st = sql(c.prepare_cached(
        "SELECT id, message_id, user_id FROM read_events
         WHERE group_id = ?1 AND id > ?2 AND id <= ?3 ORDER BY id LIMIT ?4",
    ))?;
    let rows = sql(st.query_map(bounds, |r| {
        Ok(ReadReceipt {
            id: MessageId(r.get::<_, i64>(0)? as u64),
            group: group.clone(),
            message: MessageId(r.get::<_, i64>(1)? as u64),
            user: UserId(r.get::<_, i64>(2)? as u64),
        })
    }))?;
    let reads = rows.map(sql).collect::<Result<Vec<_>, _>>()?;
    Ok(merge_events(messages, reads, limit))
}

/// Messages read from the `messages` table, each with its readers.
fn with_readers(
    c: &Connection,
    group: &GroupId,
    rows: impl Iterator<Item = rusqlite::Result<StoredMessage>>,
) -> Result<Vec<StoredMessage>, Error> {
    let mut out = Vec::new();
    for r in rows {
        let mut m = sql(r)?;
        m.read_by = with_sender(m.sender, readers(c, group, m.id)?);
        out.push(m);
    }
    Ok(out)
}

fn pending_notices(c: &Connection, limit: usize) -> Result<Vec<Notice>, Error> {
    let mut st = sql(c.prepare_cached(
        "SELECT id, user_id, group_id, message_id, created FROM notices ORDER BY id LIMIT ?1",
    ))?;
    let rows = sql(st.query_map(params![limit as i64], |r| {
        Ok(Notice {
            id: NoticeId(r.get::<_, i64>(0)? as u64),
            user: UserId(r.get::<_, i64>(1)? as u64),
            group: GroupId::new(r.get::<_, String>(2)?),
            message: MessageId(r.get::<_, i64>(3)? as u64),
            created: r.get(4)?,
        })
    }))?;
    rows.map(sql).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At ordinary load a write commits at once; while writes come faster, commits start at
    /// most every `2 × (budget − commit time)`; commits slower than the budget run back to back.
    #[test]
    fn the_pacer_spends_the_budget_on_grouping_and_no_more() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        let t0 = std::time::Instant::now();
        let mut p = Pacer::new(ms(1));
        assert_eq!(
            p.wait(t0),
            Duration::ZERO,
            "the first write commits at once"
        );
        // Commits of 400 µs, long enough for the running mean to settle.
        let mut at = t0;
        for _ in 0..64 {
            p.committed(at, at + us(400));
            at += ms(10);
        }
        assert!(p.period().abs_diff(us(1200)) < us(5), "{:?}", p.period());
        let last = at - ms(10);
        assert_eq!(
            p.wait(last + ms(10)),
            Duration::ZERO,
            "a write 10 ms after the last commit started commits at once"
        );
        assert!(p.wait(last + us(500)).abs_diff(us(700)) < us(5));
        // Commits slower than the budget: no waiting at all.
        for _ in 0..64 {
            p.committed(at, at + ms(2));
            at += ms(2);
        }
        assert_eq!(p.wait(at - ms(2) + us(1)), Duration::ZERO);
        assert_eq!(Pacer::new(Duration::ZERO).period(), Duration::ZERO);
    }

    /// The checkpoint thread is woken once as the log nears a reset (not on every commit: each
    /// wake is a system call), the writer checkpoints on every commit past the reset size, and
    /// the cycle repeats once the log has started over.
    #[test]
    fn log_watch_wakes_once_per_reset_and_checkpoints_past_it() {
        let watch = LogWatch {
            pages: AtomicI64::new(0),
            checkpointer: std::sync::OnceLock::new(),
        };
        let step = |wake, checkpoint| AfterCommit { wake, checkpoint };
        let sizes = [
            100,
            CATCH_UP_PAGES - 1,
            CATCH_UP_PAGES,
            CATCH_UP_PAGES + 500,
            WAL_RESET_PAGES,
            WAL_RESET_PAGES + 40,
            // started over
            60,
            CATCH_UP_PAGES + 3,
        ];
        let steps: Vec<AfterCommit> = sizes.iter().map(|&p| watch.committed(p)).collect();
        assert_eq!(
            steps,
            vec![
                step(false, false),
                step(false, false),
                step(true, false),
                step(false, false),
                step(false, true),
                step(false, true),
                step(false, false),
                step(true, false),
            ]
        );
    }
}
