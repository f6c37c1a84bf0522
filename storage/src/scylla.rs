//! The ScyllaDB backend (any server speaking the CQL native protocol: ScyllaDB, Apache
//! Cassandra), through the `scylla` driver. The schema and why it looks the way it does are in
//! `docs/storage.md`; read that first.
//!
//! Threads: the driver is tokio-based, so this backend owns a small tokio runtime. One plain
//! thread (`store-scylla`) does a blocking `recv` on the same bounded crossbeam queue every
//! backend uses, stamps each request (write timestamp, ordering gates, notice ids) in queue
//! order, and spawns it onto the runtime; up to [`MAX_IN_FLIGHT`] requests run concurrently
//! (pipelined on the driver's connections). Replies are called from runtime threads, only after
//! the write is acknowledged at the configured consistency. Nothing here ever runs on a gateway
//! reactor.
//!
//! Ordering: the embedded store applies requests one by one; here they overlap, so the queue
//! order that callers rely on is kept explicitly:
//! - every write carries `USING TIMESTAMP` taken from a strictly increasing clock at dispatch,
//!   so the last request *queued* wins, whatever order the writes reach the database in;
//! - requests that read before they write (group membership, idempotency keys, read marks) wait
//!   for the previous request on the same key ([`Gates`]);
//! - replies to `AppendMessage` of one group are delivered in queue order (the writes still
//!   overlap), so a caller that broadcasts on reply broadcasts in id order.
//!
//! Faults: [`open`] returns at once; a task connects with backoff, migrates, prepares, and
//! until then every request fails with `Unavailable` (so `Ping`, i.e. readiness, is false).
//! Once connected the driver reconnects by itself and re-prepares statements a restarted node
//! has forgotten; each request is bounded by [`REQUEST_TIMEOUT`], so a lost database makes
//! requests fail fast with `Unavailable` instead of piling up.

use crate::error::Error;
use crate::model::*;
use crate::request::{Request, StoreHandle};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use scylla::value::CqlValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// Settings of the ScyllaDB backend (the `[store]` keys `scylla_*`).
#[derive(Debug, Clone)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace holding corecast's tables.
    pub keyspace: String,
    /// CQL replication map without braces, e.g. `'class': 'SimpleStrategy', 'replication_factor': 1`.
    pub replication: String,
    /// Consistency of every read and write, e.g. `LOCAL_QUORUM`.
    pub consistency: String,
    /// Datacenter to prefer (and stay in) when routing; `None` treats all nodes alike.
    pub local_dc: Option<String>,
    /// Create the keyspace and tables at start.
    pub migrate: bool,
}

/// Requests the queue holds before [`StoreHandle::submit`] answers `Overloaded`.
pub const QUEUE_CAPACITY: usize = 65_536;
/// Requests running on the database at once; the dispatcher waits (and the queue fills) beyond.
pub const MAX_IN_FLIGHT: usize = 1_024;
/// Client-side bound of one statement, so a lost database fails requests fast.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time span of one message partition (one group, one day).
pub const MESSAGE_BUCKET_MS: i64 = 86_400_000;
/// Time span of one outbox partition.
pub const NOTICE_BUCKET_MS: i64 = 600_000;
/// Rows written per logged batch when a request touches many members or notices: keeps each
/// batch far below Cassandra's `batch_size_fail_threshold` (50 KiB by default).
const CHUNK: usize = 64;
/// Buckets of a group read per query while walking history backwards.
const BUCKET_PAGE: i32 = 32;
/// A drained outbox bucket is dropped from the index once it is this far in the past: by then
/// no write stamped inside it can still be in flight (they time out after 5 s).
const NOTICE_BUCKET_GRACE_MS: i64 = 2 * NOTICE_BUCKET_MS;

/// The partition (day) of a message, derived from its id so any id finds its row.
pub fn message_bucket(id: MessageId) -> i32 {
    (id.millis() - ID_EPOCH_MS).div_euclid(MESSAGE_BUCKET_MS) as i32
}

/// Notice ids: microseconds since [`ID_EPOCH_MS`] in the high 52 bits (strictly increasing per
/// process), a per-process random tag in the low 12 bits. See docs/storage.md.
const NOTICE_TAG_BITS: u32 = 12;

/// The outbox partition of a notice, derived from its id so `DeleteNotices` finds the row.
pub fn notice_bucket(id: NoticeId) -> i64 {
    let ms = (id.0 >> NOTICE_TAG_BITS) as i64 / 1000 + ID_EPOCH_MS;
    ms.div_euclid(NOTICE_BUCKET_MS)
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn now_millis() -> i64 {
    now_micros() / 1000
}

/// Parses a CQL consistency level name (`LOCAL_QUORUM`, `quorum`, ...).
pub fn parse_consistency(s: &str) -> Result<Consistency, Error> {
    let name = s.trim().to_ascii_uppercase().replace('-', "_");
    let level = match name.as_str() {
        "ANY" => Consistency::Any,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => {
            return Err(Error::Unavailable(format!(
                "store.scylla_consistency: unknown consistency level {s:?} \
                 (use ONE, LOCAL_ONE, QUORUM, LOCAL_QUORUM, EACH_QUORUM or ALL)"
            )))
        }
    };
    Ok(level)
}

fn check_keyspace(ks: &str) -> Result<(), Error> {
    let ok = !ks.is_empty()
        && ks.len() <= 48
        && ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && ks.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "store.scylla_keyspace: {ks:?} is not a valid keyspace name (letters, digits and _, \
             starting with a letter, at most 48)"
        )))
    }
}

/// The schema, in the order it must be created. Idempotent (`IF NOT EXISTS`).
pub fn schema(keyspace: &str, replication: &str) -> Vec<String> {
    let k = keyspace;
    vec![
        format!("CREATE KEYSPACE IF NOT EXISTS {k} WITH replication = {{ {replication} }}"),
        format!("CREATE TABLE IF NOT EXISTS {k}.users (user_id bigint PRIMARY KEY, email text, name text)"),
        format!("CREATE TABLE IF NOT EXISTS {k}.groups (group_id text PRIMARY KEY, name text)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.members_by_group (group_id text, user_id bigint, \
             PRIMARY KEY (group_id, user_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.groups_by_user (user_id bigint, group_id text, \
             PRIMARY KEY (user_id, group_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.messages (group_id text, bucket int, id bigint, \
             sender bigint, text text, attachments text, ts bigint, client_msg_id text, \
             read_by set<bigint>, PRIMARY KEY ((group_id, bucket), id)) \
             WITH CLUSTERING ORDER BY (id DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.group_buckets (group_id text, bucket int, \
             PRIMARY KEY (group_id, bucket)) WITH CLUSTERING ORDER BY (bucket DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.read_events (group_id text, bucket int, id bigint, \
             message_id bigint, user_id bigint, PRIMARY KEY ((group_id, bucket), id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.message_keys (group_id text, sender bigint, \
             client_msg_id text, message_id bigint, PRIMARY KEY ((group_id, sender, client_msg_id)))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.presence (user_id bigint PRIMARY KEY, online boolean, \
             last_seen bigint)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.notices (bucket bigint, id bigint, user_id bigint, \
             group_id text, message_id bigint, created bigint, PRIMARY KEY (bucket, id)) \
             WITH gc_grace_seconds = 10800"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.notice_buckets (p int, bucket bigint, \
             PRIMARY KEY (p, bucket)) WITH gc_grace_seconds = 10800"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.failed_notices (p int, id bigint, user_id bigint, \
             group_id text, message_id bigint, created bigint, reason text, failed_at bigint, \
             PRIMARY KEY (p, id))"
        ),
    ]
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("scylla: {e}"))
}

async fn connect(config: &ScyllaConfig, consistency: Consistency) -> Result<Session, Error> {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &config.local_dc {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .consistency(consistency)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .load_balancing_policy(policy.build())
        .build();
    SessionBuilder::new()
        .known_nodes(&config.nodes)
        .connection_timeout(REQUEST_TIMEOUT)
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .map_err(unavailable)
}

async fn run_migration(session: &Session, config: &ScyllaConfig) -> Result<(), Error> {
    for ddl in schema(&config.keyspace, &config.replication) {
        session
            .query_unpaged(ddl.as_str(), &[])
            .await
            .map_err(|e| {
                Error::Unavailable(format!("scylla: migration statement failed: {e}\n  {ddl}"))
            })?;
    }
    session
        .await_schema_agreement()
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Refuses a keyspace whose tables were created while group ids were integers (`group_id
/// bigint`): a CQL column's type cannot change in place, and every statement here binds text.
/// The operator's way forward is in docs/storage.md ("A keyspace with integer group ids").
async fn check_group_id_type(session: &Session, keyspace: &str) -> Result<(), Error> {
    let qr = session
        .query_unpaged(
            "SELECT type FROM system_schema.columns WHERE keyspace_name = ? \
             AND table_name = 'groups' AND column_name = 'group_id'",
            (keyspace,),
        )
        .await
        .map_err(unavailable)?;
    match first::<(String,)>(qr)? {
        Some((t,)) if t != "text" => Err(Error::Unavailable(format!(
            "keyspace {keyspace} holds group ids as {t} (written by a corecast from before \
             string group ids); this version stores them as text and cannot use it. Point \
             CORECAST_SCYLLA_KEYSPACE at a new keyspace (created at start), and copy the old \
             data over if it is needed: docs/storage.md, \"A keyspace with integer group ids\""
        ))),
        _ => Ok(()),
    }
}

/// Creates the keyspace and tables (`corecast migrate`). Blocks; retries an unreachable
/// database for about a minute, then gives up with the last error.
pub fn migrate(config: &ScyllaConfig) -> Result<(), Error> {
    check_keyspace(&config.keyspace)?;
    let consistency = parse_consistency(&config.consistency)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Unavailable(format!("cannot start a tokio runtime: {e}")))?;
    rt.block_on(async {
        let mut delay = Duration::from_millis(500);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let session = loop {
            match connect(config, consistency).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(nodes = ?config.nodes, error = %e, retry_in = ?delay,
                        "cannot reach ScyllaDB/Cassandra; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        };
        run_migration(&session, config).await?;
        check_group_id_type(&session, &config.keyspace).await
    })
}

/// Every statement, prepared once per session. The driver re-prepares on nodes that lost them.
struct Statements {
    put_user: PreparedStatement,
    get_user: PreparedStatement,
    put_group: PreparedStatement,
    get_group: PreparedStatement,
    members_of: PreparedStatement,
    is_member: PreparedStatement,
    add_member_g: PreparedStatement,
    add_member_u: PreparedStatement,
    del_member_g: PreparedStatement,
    del_member_u: PreparedStatement,
    groups_of_user: PreparedStatement,
    insert_message: PreparedStatement,
    insert_message_keyed: PreparedStatement,
    insert_group_bucket: PreparedStatement,
    insert_key: PreparedStatement,
    get_key: PreparedStatement,
    insert_notice: PreparedStatement,
    insert_notice_bucket: PreparedStatement,
    get_message: PreparedStatement,
    message_readers: PreparedStatement,
    mark_read: PreparedStatement,
    insert_read_event: PreparedStatement,
    since_reads: PreparedStatement,
    history_buckets: PreparedStatement,
    history_page: PreparedStatement,
    since_buckets: PreparedStatement,
    since_page: PreparedStatement,
    set_presence: PreparedStatement,
    get_presence: PreparedStatement,
    notice_buckets: PreparedStatement,
    notices_in: PreparedStatement,
    get_notice: PreparedStatement,
    delete_notice: PreparedStatement,
    delete_notice_bucket: PreparedStatement,
    insert_failed: PreparedStatement,
    count_failed: PreparedStatement,
    ping: PreparedStatement,
}

const MESSAGE_COLUMNS: &str = "id, sender, text, attachments, ts, client_msg_id, read_by";

impl Statements {
    async fn prepare(s: &Session, k: &str) -> Result<Statements, Error> {
        let p = |cql: String| async move {
            let mut st = s
                .prepare(cql.as_str())
                .await
                .map_err(|e| Error::Unavailable(format!("scylla: cannot prepare {cql:?}: {e}")))?;
            // Every statement here may be retried safely: writes carry an explicit timestamp
            // and fixed values (or add to a set), reads change nothing. No counters, no LWT.
            st.set_is_idempotent(true);
            Ok::<_, Error>(st)
        };
        let m = MESSAGE_COLUMNS;
        Ok(Statements {
            put_user: p(format!("INSERT INTO {k}.users (user_id, email, name) VALUES (?, ?, ?) USING TIMESTAMP ?")).await?,
            get_user: p(format!("SELECT email, name FROM {k}.users WHERE user_id = ?")).await?,
            put_group: p(format!("INSERT INTO {k}.groups (group_id, name) VALUES (?, ?) USING TIMESTAMP ?")).await?,
            get_group: p(format!("SELECT name FROM {k}.groups WHERE group_id = ?")).await?,
            members_of: p(format!("SELECT user_id FROM {k}.members_by_group WHERE group_id = ?")).await?,
            is_member: p(format!("SELECT user_id FROM {k}.members_by_group WHERE group_id = ? AND user_id = ?")).await?,
            add_member_g: p(format!("INSERT INTO {k}.members_by_group (group_id, user_id) VALUES (?, ?) USING TIMESTAMP ?")).await?,
            add_member_u: p(format!("INSERT INTO {k}.groups_by_user (user_id, group_id) VALUES (?, ?) USING TIMESTAMP ?")).await?,
            del_member_g: p(format!("DELETE FROM {k}.members_by_group USING TIMESTAMP ? WHERE group_id = ? AND user_id = ?")).await?,
            del_member_u: p(format!("DELETE FROM {k}.groups_by_user USING TIMESTAMP ? WHERE user_id = ? AND group_id = ?")).await?,
            groups_of_user: p(format!("SELECT group_id FROM {k}.groups_by_user WHERE user_id = ?")).await?,
            insert_message: p(format!(
                "INSERT INTO {k}.messages (group_id, bucket, id, sender, text, attachments, ts) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")).await?,
            insert_message_keyed: p(format!(
                "INSERT INTO {k}.messages (group_id, bucket, id, sender, text, attachments, ts, client_msg_id) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")).await?,
            insert_group_bucket: p(format!("INSERT INTO {k}.group_buckets (group_id, bucket) VALUES (?, ?) USING TIMESTAMP ?")).await?,
            insert_key: p(format!(
                "INSERT INTO {k}.message_keys (group_id, sender, client_msg_id, message_id) \
                 VALUES (?, ?, ?, ?) USING TIMESTAMP ?")).await?,
            get_key: p(format!("SELECT message_id FROM {k}.message_keys WHERE group_id = ? AND sender = ? AND client_msg_id = ?")).await?,
            insert_notice: p(format!(
                "INSERT INTO {k}.notices (bucket, id, user_id, group_id, message_id, created) \
                 VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")).await?,
            insert_notice_bucket: p(format!("INSERT INTO {k}.notice_buckets (p, bucket) VALUES (0, ?) USING TIMESTAMP ?")).await?,
            get_message: p(format!("SELECT {m} FROM {k}.messages WHERE group_id = ? AND bucket = ? AND id = ?")).await?,
            message_readers: p(format!("SELECT sender, read_by FROM {k}.messages WHERE group_id = ? AND bucket = ? AND id = ?")).await?,
            mark_read: p(format!("UPDATE {k}.messages USING TIMESTAMP ? SET read_by = read_by + ? WHERE group_id = ? AND bucket = ? AND id = ?")).await?,
            insert_read_event: p(format!(
                "INSERT INTO {k}.read_events (group_id, bucket, id, message_id, user_id) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?")).await?,
            since_reads: p(format!("SELECT id, message_id, user_id FROM {k}.read_events WHERE group_id = ? AND bucket = ? AND id > ? AND id <= ? ORDER BY id ASC LIMIT ?")).await?,
            history_buckets: p(format!("SELECT bucket FROM {k}.group_buckets WHERE group_id = ? AND bucket <= ? LIMIT ?")).await?,
            history_page: p(format!("SELECT {m} FROM {k}.messages WHERE group_id = ? AND bucket = ? AND id < ? LIMIT ?")).await?,
            since_buckets: p(format!("SELECT bucket FROM {k}.group_buckets WHERE group_id = ? AND bucket >= ? AND bucket <= ? ORDER BY bucket ASC LIMIT ?")).await?,
            since_page: p(format!("SELECT {m} FROM {k}.messages WHERE group_id = ? AND bucket = ? AND id > ? AND id <= ? ORDER BY id ASC LIMIT ?")).await?,
            set_presence: p(format!("INSERT INTO {k}.presence (user_id, online, last_seen) VALUES (?, ?, ?) USING TIMESTAMP ?")).await?,
            get_presence: p(format!("SELECT online, last_seen FROM {k}.presence WHERE user_id = ?")).await?,
            notice_buckets: p(format!("SELECT bucket FROM {k}.notice_buckets WHERE p = 0")).await?,
            notices_in: p(format!("SELECT id, user_id, group_id, message_id, created FROM {k}.notices WHERE bucket = ? LIMIT ?")).await?,
            get_notice: p(format!("SELECT user_id, group_id, message_id, created FROM {k}.notices WHERE bucket = ? AND id = ?")).await?,
            delete_notice: p(format!("DELETE FROM {k}.notices USING TIMESTAMP ? WHERE bucket = ? AND id = ?")).await?,
            delete_notice_bucket: p(format!("DELETE FROM {k}.notice_buckets USING TIMESTAMP ? WHERE p = 0 AND bucket = ?")).await?,
            insert_failed: p(format!(
                "INSERT INTO {k}.failed_notices (p, id, user_id, group_id, message_id, created, reason, failed_at) \
                 VALUES (0, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")).await?,
            count_failed: p(format!("SELECT COUNT(*) FROM {k}.failed_notices WHERE p = 0")).await?,
            ping: p("SELECT release_version FROM system.local".to_string()).await?,
        })
    }
}

/// A connected, migrated, prepared session.
struct Db {
    session: Session,
    st: Statements,
}

/// What the dispatcher and the connector share.
struct Shared {
    db: OnceLock<Arc<Db>>,
    /// Why `db` is not set yet, for the `Unavailable` answers meanwhile.
    status: Mutex<String>,
}

/// Opens the backend: returns the handle at once and connects in the background (with
/// backoff, logging every failed attempt). Until connected, requests fail with `Unavailable`.
pub fn open(config: &ScyllaConfig) -> Result<StoreHandle, Error> {
    check_keyspace(&config.keyspace)?;
    let consistency = parse_consistency(&config.consistency)?;
    if config.nodes.is_empty() {
        return Err(Error::Unavailable("store.scylla_nodes is empty".into()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("store-scylla-rt")
        .enable_all()
        .build()
        .map_err(|e| Error::Unavailable(format!("cannot start the store runtime: {e}")))?;
    let shared = Arc::new(Shared {
        db: OnceLock::new(),
        status: Mutex::new(format!(
            "connecting to ScyllaDB/Cassandra at {}",
            config.nodes.join(",")
        )),
    });
    rt.spawn(connector(config.clone(), consistency, shared.clone()));
    let (tx, rx) = crossbeam_channel::bounded::<Request>(QUEUE_CAPACITY);
    std::thread::Builder::new()
        .name("store-scylla".into())
        .spawn(move || dispatcher(rt, rx, shared))
        .map_err(|e| Error::Unavailable(format!("cannot start the store thread: {e}")))?;
    Ok(StoreHandle::new(tx, "scylla"))
}

async fn connector(config: ScyllaConfig, consistency: Consistency, shared: Arc<Shared>) {
    let mut delay = Duration::from_millis(250);
    let nodes = config.nodes.join(",");
    loop {
        let attempt = async {
            let session = connect(&config, consistency).await?;
            if config.migrate {
                run_migration(&session, &config).await?;
            }
            check_group_id_type(&session, &config.keyspace).await?;
            let st = Statements::prepare(&session, &config.keyspace)
                .await
                .map_err(|e| {
                    if config.migrate {
                        e
                    } else {
                        Error::Unavailable(format!(
                            "{e} (is the schema there? run `corecast migrate`)"
                        ))
                    }
                })?;
            Ok::<_, Error>(Db { session, st })
        };
        match attempt.await {
            Ok(db) => {
                let _ = shared.db.set(Arc::new(db));
                tracing::info!(nodes, keyspace = config.keyspace, "scylla store ready");
                return;
            }
            Err(e) => {
                let msg = format!("cannot reach ScyllaDB/Cassandra at {nodes}: {e}");
                tracing::warn!(error = %msg, retry_in = ?delay, "scylla store not ready; retrying");
                *shared.status.lock().unwrap_or_else(|p| p.into_inner()) = msg;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Keys on which requests are applied one after another, in queue order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// Membership reads-then-writes of one group.
    Group(GroupId),
    /// One idempotency key: (group, sender, client_msg_id).
    Dedupe(GroupId, u64, String),
    /// One reader of one message.
    Read(GroupId, u64, u64),
    /// The order of `AppendMessage` replies of one group.
    Replies(GroupId),
}

/// A gate is a zero-permit semaphore that its owner closes when done (also when dropped by a
/// cancelled task); a follower waits for `acquire` to return (it errs on close).
struct GateDone(Arc<Semaphore>);

impl Drop for GateDone {
    fn drop(&mut self) {
        self.0.close();
    }
}

async fn pass(gate: Option<Arc<Semaphore>>) {
    if let Some(g) = gate {
        let _ = g.acquire().await;
    }
}

/// The tail gate of every key. Only the dispatcher thread touches it.
#[derive(Default)]
struct Gates {
    tails: HashMap<Key, Arc<Semaphore>>,
    prune_at: usize,
}

impl Gates {
    /// Appends a request to `key`'s chain: returns the gate to wait for (the previous request
    /// on the key, if still running) and this request's own gate.
    fn chain(&mut self, key: Key) -> (Option<Arc<Semaphore>>, GateDone) {
        let mine = Arc::new(Semaphore::new(0));
        let prev = self
            .tails
            .insert(key, mine.clone())
            .filter(|g| !g.is_closed());
        if self.tails.len() > self.prune_at {
            self.tails.retain(|_, g| !g.is_closed());
            self.prune_at = (self.tails.len() * 2).max(1024);
        }
        (prev, GateDone(mine))
    }
}

/// Strictly increasing microsecond clock for write timestamps and notice ids.
struct Clock {
    last: i64,
}

impl Clock {
    fn next(&mut self) -> i64 {
        self.last = (self.last + 1).max(now_micros());
        self.last
    }
}

/// What the dispatcher decided for one request before it runs.
struct Stamp {
    /// `USING TIMESTAMP` of every write of the request.
    ts: i64,
    /// Wait for this before starting.
    after: Option<Arc<Semaphore>>,
    done: Option<GateDone>,
    /// For appends: wait for this before replying; close `reply_done` after replying.
    reply_after: Option<Arc<Semaphore>>,
    reply_done: Option<GateDone>,
    /// For appends: one id per notified user.
    notice_ids: Vec<NoticeId>,
}

/// Hands one request to the runtime, after the gates that keep its key's order.
#[allow(clippy::too_many_arguments)]
fn dispatch_one(
    rt: &tokio::runtime::Runtime,
    shared: &Arc<Shared>,
    in_flight: &Arc<Semaphore>,
    gates: &mut Gates,
    clock: &mut Clock,
    notice_clock: &mut Clock,
    tag: u64,
    req: Request,
) {
    let Some(db) = shared.db.get().cloned() else {
        let status = shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        req.fail(Error::Unavailable(status));
        return;
    };
    let permit = rt
        .block_on(in_flight.clone().acquire_owned())
        .expect("invariant: the in-flight semaphore is never closed");
    let mut stamp = Stamp {
        ts: clock.next(),
        after: None,
        done: None,
        reply_after: None,
        reply_done: None,
        notice_ids: Vec::new(),
    };
    let key = match &req {
        Request::PutGroup { group, .. } => Some(Key::Group(group.id.clone())),
        Request::GetGroup { group, .. }
        | Request::AddMember { group, .. }
        | Request::RemoveMember { group, .. } => Some(Key::Group(group.clone())),
        Request::MarkRead {
            group,
            message,
            user,
            ..
        } => Some(Key::Read(group.clone(), message.0, user.0)),
        Request::AppendMessage {
            message, notify, ..
        } => {
            let (after, done) = gates.chain(Key::Replies(message.group.clone()));
            stamp.reply_after = after;
            stamp.reply_done = Some(done);
            stamp.notice_ids = notify
                .iter()
                .map(|_| {
                    let t = (notice_clock.next() - ID_EPOCH_MS * 1000).max(0) as u64;
                    NoticeId((t << NOTICE_TAG_BITS) | tag)
                })
                .collect();
            message
                .client_msg_id
                .as_ref()
                .map(|k| Key::Dedupe(message.group.clone(), message.sender.0, k.clone()))
        }
        _ => None,
    };
    if let Some(key) = key {
        let (after, done) = gates.chain(key);
        stamp.after = after;
        stamp.done = Some(done);
    }
    rt.spawn(async move {
        let _permit = permit;
        pass(stamp.after.take()).await;
        handle(&db, req, stamp).await;
    });
}

fn dispatcher(
    rt: tokio::runtime::Runtime,
    rx: crossbeam_channel::Receiver<Request>,
    shared: Arc<Shared>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut gates = Gates::default();
    let mut clock = Clock { last: 0 };
    let mut notice_clock = Clock { last: 0 };
    let tag = fastrand_tag();
    let mut reqs = Vec::new();
    while let Ok(first) = rx.recv() {
        first.flatten(&mut reqs);
        for req in reqs.drain(..) {
            dispatch_one(
                &rt,
                &shared,
                &in_flight,
                &mut gates,
                &mut clock,
                &mut notice_clock,
                tag,
                req,
            );
        }
    }
    // Every handle is gone: let the requests in flight finish (their replies must be called),
    // bounded, then stop the runtime.
    rt.block_on(async {
        let _ = tokio::time::timeout(
            REQUEST_TIMEOUT * 2,
            in_flight.acquire_many(MAX_IN_FLIGHT as u32),
        )
        .await;
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// A per-process tag for notice ids, so two gateway processes minting ids in the same
/// microsecond almost surely differ.
fn fastrand_tag() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_micros() as u64);
    h.write_u32(std::process::id());
    h.finish() & ((1 << NOTICE_TAG_BITS) - 1)
}

fn big(v: u64) -> Option<CqlValue> {
    Some(CqlValue::BigInt(v as i64))
}
fn bigi(v: i64) -> Option<CqlValue> {
    Some(CqlValue::BigInt(v))
}
fn text(v: &str) -> Option<CqlValue> {
    Some(CqlValue::Text(v.to_string()))
}

type Row = Vec<Option<CqlValue>>;

/// Runs a logged (atomic) batch of prepared statements with their values.
async fn logged_batch(db: &Db, items: Vec<(&PreparedStatement, Row)>) -> Result<(), Error> {
    if items.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::new(BatchType::Logged);
    let mut values = Vec::with_capacity(items.len());
    for (st, row) in items {
        batch.append_statement(st.clone());
        values.push(row);
    }
    batch.set_is_idempotent(true);
    db.session
        .batch(&batch, values)
        .await
        .map_err(unavailable)?;
    Ok(())
}

fn rows<R>(qr: QueryResult) -> Result<Vec<R>, Error>
where
    R: for<'f> DeserializeRow<'f, 'f>,
{
    let rows = qr.into_rows_result().map_err(unavailable)?;
    let out = rows
        .rows::<R>()
        .map_err(unavailable)?
        .map(|r| r.map_err(unavailable))
        .collect();
    out
}

fn first<R>(qr: QueryResult) -> Result<Option<R>, Error>
where
    R: for<'f> DeserializeRow<'f, 'f>,
{
    Ok(rows::<R>(qr)?.into_iter().next())
}

async fn groups_of_user(db: &Db, user: UserId) -> Result<Vec<GroupId>, Error> {
    let qr = db
        .session
        .execute_unpaged(&db.st.groups_of_user, (user.0 as i64,))
        .await
        .map_err(unavailable)?;
    let mut groups: Vec<GroupId> = rows::<(String,)>(qr)?
        .into_iter()
        .map(|(g,)| GroupId::new(g))
        .collect();
    // The clustering order is the database's (bytes of UTF-8); the embedded store answers in
    // Rust's order of strings, which is the same. Sorted here all the same, so that both
    // backends agree whatever the database.
    groups.sort();
    Ok(groups)
}

async fn handle(db: &Db, req: Request, mut stamp: Stamp) {
    let ts = stamp.ts;
    match req {
        Request::PutUser { user, reply } => {
            let r = db
                .session
                .execute_unpaged(
                    &db.st.put_user,
                    (
                        user.id.0 as i64,
                        user.email.as_deref(),
                        user.name.as_deref(),
                        ts,
                    ),
                )
                .await
                .map(|_| ())
                .map_err(unavailable);
            reply(r)
        }
        Request::GetUser { user, reply } => reply(get_user(db, user).await),
        Request::PutGroup { group, reply } => reply(put_group(db, &group, ts).await),
        Request::GetGroup { group, reply } => reply(get_group(db, group).await),
        Request::AddMember { group, user, reply } => reply(add_member(db, group, user, ts).await),
        Request::RemoveMember { group, user, reply } => {
            reply(remove_member(db, group, user, ts).await)
        }
        Request::GroupsOfUser { user, reply } => reply(groups_of_user(db, user).await),
        Request::GroupsOfUsers { users, reply } => {
            // One query per user (a user's groups are one partition), all in flight at once.
            let r = futures::future::try_join_all(users.into_iter().map(|u| groups_of_user(db, u)));
            reply(r.await)
        }
        Request::AppendMessage {
            message,
            notify,
            reply,
        } => {
            let ids = std::mem::take(&mut stamp.notice_ids);
            let r = append_message(db, message, &notify, &ids, ts).await;
            // Replies of one group leave in queue order, so callers broadcast in id order.
            pass(stamp.reply_after.take()).await;
            reply(r);
            drop(stamp.reply_done.take());
        }
        Request::MarkRead {
            group,
            message,
            user,
            event,
            reply,
        } => reply(mark_read(db, group, message, user, event, ts).await),
        Request::GetMessage {
            group,
            message,
            reply,
        } => reply(get_message(db, &group, message).await),
        Request::History {
            group,
            limit,
            before,
            reply,
        } => reply(history(db, &group, limit, before).await),
        Request::Since {
            group,
            after,
            upto,
            limit,
            reply,
        } => reply(since(db, &group, after, upto, limit).await),
        Request::SetPresence {
            user,
            online,
            at,
            reply,
        } => {
            let r = db
                .session
                .execute_unpaged(&db.st.set_presence, (user.0 as i64, online, at, ts))
                .await
                .map(|_| ())
                .map_err(unavailable);
            reply(r)
        }
        Request::GetPresence { user, reply } => {
            let r = async {
                let qr = db
                    .session
                    .execute_unpaged(&db.st.get_presence, (user.0 as i64,))
                    .await
                    .map_err(unavailable)?;
                Ok(
                    first::<(Option<bool>, Option<i64>)>(qr)?.map(|(online, last_seen)| Presence {
                        online: online.unwrap_or(false),
                        last_seen: last_seen.unwrap_or(0),
                    }),
                )
            }
            .await;
            reply(r)
        }
        Request::PendingNotices { limit, reply } => reply(pending_notices(db, limit, ts).await),
        Request::DeleteNotices { ids, reply } => {
            let r = futures::future::try_join_all(ids.iter().map(|id| {
                db.session
                    .execute_unpaged(&db.st.delete_notice, (ts, notice_bucket(*id), id.0 as i64))
            }))
            .await
            .map(|_| ())
            .map_err(unavailable);
            reply(r)
        }
        Request::FailNotices { ids, reason, reply } => {
            let r = futures::future::try_join_all(
                ids.iter().map(|id| fail_notice(db, *id, &reason, ts)),
            )
            .await
            .map(|_| ());
            reply(r)
        }
        Request::FailedNoticeCount { reply } => {
            let r = async {
                let qr = db
                    .session
                    .execute_unpaged(&db.st.count_failed, ())
                    .await
                    .map_err(unavailable)?;
                Ok(first::<(i64,)>(qr)?.map(|(n,)| n as u64).unwrap_or(0))
            }
            .await;
            reply(r)
        }
        Request::Batch(_) => {
            unreachable!("invariant: batches are flattened before they are applied")
        }
        Request::Ping { reply } => {
            let r = db
                .session
                .execute_unpaged(&db.st.ping, ())
                .await
                .map(|_| ())
                .map_err(unavailable);
            reply(r)
        }
    }
    drop(stamp.done.take());
}

async fn get_user(db: &Db, user: UserId) -> Result<Option<User>, Error> {
    let qr = db
        .session
        .execute_unpaged(&db.st.get_user, (user.0 as i64,))
        .await
        .map_err(unavailable)?;
    Ok(
        first::<(Option<String>, Option<String>)>(qr)?.map(|(email, name)| User {
            id: user,
            email,
            name,
        }),
    )
}

async fn members_of(db: &Db, group: &GroupId) -> Result<Vec<UserId>, Error> {
    let qr = db
        .session
        .execute_unpaged(&db.st.members_of, (group.as_str(),))
        .await
        .map_err(unavailable)?;
    let mut v: Vec<UserId> = rows::<(i64,)>(qr)?
        .into_iter()
        .map(|(u,)| UserId(u as u64))
        .collect();
    v.sort();
    Ok(v)
}

async fn group_name(db: &Db, group: &GroupId) -> Result<Option<String>, Error> {
    let qr = db
        .session
        .execute_unpaged(&db.st.get_group, (group.as_str(),))
        .await
        .map_err(unavailable)?;
    Ok(first::<(Option<String>,)>(qr)?.map(|(n,)| n.unwrap_or_default()))
}

async fn get_group(db: &Db, group: GroupId) -> Result<Option<Group>, Error> {
    match group_name(db, &group).await? {
        None => Ok(None),
        Some(name) => Ok(Some(Group {
            members: members_of(db, &group).await?,
            id: group,
            name,
        })),
    }
}

fn member_rows<'a>(
    db: &'a Db,
    g: &GroupId,
    u: UserId,
    add: bool,
    ts: i64,
) -> [(&'a PreparedStatement, Row); 2] {
    let g = text(g.as_str());
    if add {
        [
            (&db.st.add_member_g, vec![g.clone(), big(u.0), bigi(ts)]),
            (&db.st.add_member_u, vec![big(u.0), g, bigi(ts)]),
        ]
    } else {
        [
            (&db.st.del_member_g, vec![bigi(ts), g.clone(), big(u.0)]),
            (&db.st.del_member_u, vec![bigi(ts), big(u.0), g]),
        ]
    }
}

async fn put_group(db: &Db, group: &Group, ts: i64) -> Result<MembershipChange, Error> {
    let before = members_of(db, &group.id).await?;
    let (change, _) = MembershipChange::between(&before, &group.members);
    // Both membership tables of one user change in one logged batch; a large change is split
    // into several batches (see docs/storage.md), all idempotent, the name last so that a
    // group only appears once its members are written.
    let mut items: Vec<(&PreparedStatement, Row)> = Vec::new();
    for u in &change.removed {
        items.extend(member_rows(db, &group.id, *u, false, ts));
    }
    for u in &change.added {
        items.extend(member_rows(db, &group.id, *u, true, ts));
    }
    let mut chunks: Vec<Vec<_>> = Vec::new();
    while !items.is_empty() {
        let rest = items.split_off(items.len().min(CHUNK * 2));
        chunks.push(std::mem::replace(&mut items, rest));
    }
    let name = (
        &db.st.put_group,
        vec![text(group.id.as_str()), text(&group.name), bigi(ts)],
    );
    match chunks.pop() {
        Some(mut last) => {
            futures::future::try_join_all(chunks.into_iter().map(|c| logged_batch(db, c))).await?;
            last.push(name);
            logged_batch(db, last).await?;
        }
        None => logged_batch(db, vec![name]).await?,
    }
    Ok(change)
}

async fn is_member(db: &Db, group: &GroupId, user: UserId) -> Result<bool, Error> {
    let qr = db
        .session
        .execute_unpaged(&db.st.is_member, (group.as_str(), user.0 as i64))
        .await
        .map_err(unavailable)?;
    Ok(first::<(i64,)>(qr)?.is_some())
}

async fn add_member(db: &Db, group: GroupId, user: UserId, ts: i64) -> Result<bool, Error> {
    if group_name(db, &group).await?.is_none() {
        return Err(Error::NoSuchGroup(group));
    }
    if is_member(db, &group, user).await? {
        return Ok(false);
    }
    logged_batch(db, member_rows(db, &group, user, true, ts).into()).await?;
    Ok(true)
}

async fn remove_member(db: &Db, group: GroupId, user: UserId, ts: i64) -> Result<bool, Error> {
    if !is_member(db, &group, user).await? {
        return Ok(false);
    }
    logged_batch(db, member_rows(db, &group, user, false, ts).into()).await?;
    Ok(true)
}

type MessageRow = (
    i64,
    i64,
    String,
    String,
    i64,
    Option<String>,
    Option<Vec<i64>>,
);

fn to_message(group: &GroupId, r: MessageRow) -> StoredMessage {
    let (id, sender, text, attachments, ts, client_msg_id, read_by) = r;
    let read_by: Vec<UserId> = read_by
        .unwrap_or_default()
        .into_iter()
        .map(|u| UserId(u as u64))
        .collect();
    let read_by = with_sender(UserId(sender as u64), read_by);
    StoredMessage {
        id: MessageId(id as u64),
        group: group.clone(),
        sender: UserId(sender as u64),
        text,
        // Written by this module from valid JSON; a corrupt row reads as no attachments.
        attachments: serde_json::from_str(&attachments).unwrap_or_default(),
        timestamp: ts,
        client_msg_id,
        read_by,
    }
}

async fn get_message(
    db: &Db,
    group: &GroupId,
    message: MessageId,
) -> Result<Option<StoredMessage>, Error> {
    let qr = db
        .session
        .execute_unpaged(
            &db.st.get_message,
            (group.as_str(), message_bucket(message), message.0 as i64),
        )
        .await
        .map_err(unavailable)?;
    Ok(first::<MessageRow>(qr)?.map(|r| to_message(group, r)))
}

async fn append_message(
    db: &Db,
    m: NewMessage,
    notify: &[UserId],
    notice_ids: &[NoticeId],
    ts: i64,
) -> Result<Appended, Error> {
    if let Some(key) = &m.client_msg_id {
        let qr = db
            .session
            .execute_unpaged(
                &db.st.get_key,
                (m.group.as_str(), m.sender.0 as i64, key.as_str()),
            )
            .await
            .map_err(unavailable)?;
        if let Some((Some(id),)) = first::<(Option<i64>,)>(qr)? {
            // The key and its message are written in one logged batch, so the message is there.
            if let Some(message) = get_message(db, &m.group, MessageId(id as u64)).await? {
                return Ok(Appended {
                    message,
                    duplicate: true,
                });
            }
        }
    }
    let attachments = serde_json::to_string(&m.attachments)
        .expect("invariant: attachments are plain strings and always serialize");
    let bucket = message_bucket(m.id);
    let g = text(m.group.as_str());
    let mut main: Vec<(&PreparedStatement, Row)> = Vec::with_capacity(4 + CHUNK);
    let mut row = vec![
        g.clone(),
        Some(CqlValue::Int(bucket)),
        big(m.id.0),
        big(m.sender.0),
        text(&m.text),
        text(&attachments),
        bigi(m.timestamp),
    ];
    match &m.client_msg_id {
        Some(key) => {
            row.push(text(key));
            row.push(bigi(ts));
            main.push((&db.st.insert_message_keyed, row));
            main.push((
                &db.st.insert_key,
                vec![g.clone(), big(m.sender.0), text(key), big(m.id.0), bigi(ts)],
            ));
        }
        None => {
            row.push(bigi(ts));
            main.push((&db.st.insert_message, row));
        }
    }
    main.push((
        &db.st.insert_group_bucket,
        vec![g.clone(), Some(CqlValue::Int(bucket)), bigi(ts)],
    ));
    let mut notices: Vec<(&PreparedStatement, Row)> = Vec::with_capacity(notify.len() + 2);
    let mut buckets: Vec<i64> = notice_ids.iter().map(|id| notice_bucket(*id)).collect();
    buckets.dedup();
    for b in buckets {
        notices.push((&db.st.insert_notice_bucket, vec![bigi(b), bigi(ts)]));
    }
    for (u, id) in notify.iter().zip(notice_ids) {
        notices.push((
            &db.st.insert_notice,
            vec![
                bigi(notice_bucket(*id)),
                big(id.0),
                big(u.0),
                g.clone(),
                big(m.id.0),
                bigi(m.timestamp),
                bigi(ts),
            ],
        ));
    }
    // Small fan-outs: message, key, indexes and notices in one atomic batch. Large ones would
    // exceed the batch size limit: their notices go first, in chunks, and the message batch
    // last, so a failure can only leave notices of a message that was never acknowledged
    // (the notifier skips notices whose message is missing).
    if notices.len() > CHUNK {
        let mut chunks = Vec::new();
        while !notices.is_empty() {
            let rest = notices.split_off(notices.len().min(CHUNK));
            chunks.push(std::mem::replace(&mut notices, rest));
        }
        futures::future::try_join_all(chunks.into_iter().map(|c| logged_batch(db, c))).await?;
    } else {
        main.append(&mut notices);
    }
    logged_batch(db, main).await?;
    Ok(Appended {
        message: m.into(),
        duplicate: false,
    })
}

async fn mark_read(
    db: &Db,
    group: GroupId,
    message: MessageId,
    user: UserId,
    event: MessageId,
    ts: i64,
) -> Result<bool, Error> {
    let bucket = message_bucket(message);
    let qr = db
        .session
        .execute_unpaged(
            &db.st.message_readers,
            (group.as_str(), bucket, message.0 as i64),
        )
        .await
        .map_err(unavailable)?;
    let Some((sender, readers)) = first::<(Option<i64>, Option<Vec<i64>>)>(qr)? else {
        return Err(Error::NoSuchMessage { group, message });
    };
    // The sender has read it from the start (see `with_sender`): nothing to add.
    if sender == Some(user.0 as i64) || readers.unwrap_or_default().contains(&(user.0 as i64)) {
        return Ok(false);
    }
    // A set addition (concurrent readers merge, no read-modify-write of the list), and the
    // receipt as an event of the group's stream, in its bucket, atomically.
    let g = text(group.as_str());
    let event_bucket = Some(CqlValue::Int(message_bucket(event)));
    logged_batch(
        db,
        vec![
            (
                &db.st.mark_read,
                vec![
                    bigi(ts),
                    Some(CqlValue::Set(vec![CqlValue::BigInt(user.0 as i64)])),
                    g.clone(),
                    Some(CqlValue::Int(bucket)),
                    big(message.0),
                ],
            ),
            (
                &db.st.insert_read_event,
                vec![
                    g.clone(),
                    event_bucket.clone(),
                    big(event.0),
                    big(message.0),
                    big(user.0),
                    bigi(ts),
                ],
            ),
            (&db.st.insert_group_bucket, vec![g, event_bucket, bigi(ts)]),
        ],
    )
    .await?;
    Ok(true)
}

/// The group's messages that `st` selects with `values` (one bucket's page).
async fn message_page(
    db: &Db,
    group: &GroupId,
    st: &PreparedStatement,
    values: impl scylla::serialize::row::SerializeRow,
) -> Result<Vec<StoredMessage>, Error> {
    let qr = db
        .session
        .execute_unpaged(st, values)
        .await
        .map_err(unavailable)?;
    Ok(rows::<MessageRow>(qr)?
        .into_iter()
        .map(|r| to_message(group, r))
        .collect())
}

async fn history(
    db: &Db,
    group: &GroupId,
    limit: usize,
    before: Option<MessageId>,
) -> Result<Vec<StoredMessage>, Error> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let (mut from_bucket, bound) = match before {
        Some(b) => (message_bucket(b), b.0 as i64),
        None => (i32::MAX, i64::MAX),
    };
    // Walk the group's non-empty buckets (newest first) until `limit` is filled or the group's
    // first bucket is passed: the index holds only buckets that have messages.
    loop {
        let qr = db
            .session
            .execute_unpaged(
                &db.st.history_buckets,
                (group.as_str(), from_bucket, BUCKET_PAGE),
            )
            .await
            .map_err(unavailable)?;
        let buckets: Vec<i32> = rows::<(i32,)>(qr)?.into_iter().map(|(b,)| b).collect();
        for &b in &buckets {
            let want = (limit - out.len()).min(i32::MAX as usize) as i32;
            out.extend(
                message_page(
                    db,
                    group,
                    &db.st.history_page,
                    (group.as_str(), b, bound, want),
                )
                .await?,
            );
            if out.len() >= limit {
                return Ok(out);
            }
        }
        match buckets.last() {
            Some(&last) if buckets.len() == BUCKET_PAGE as usize && last > i32::MIN => {
                from_bucket = last - 1
            }
            _ => return Ok(out),
        }
    }
}

/// The group's messages in `(after, upto]`, oldest first: its non-empty buckets from
/// `after`'s to `upto`'s, ascending.
async fn since(
    db: &Db,
    group: &GroupId,
    after: MessageId,
    upto: MessageId,
    limit: usize,
) -> Result<Vec<GroupEvent>, Error> {
    let mut out = Vec::new();
    if limit == 0 || upto <= after {
        return Ok(out);
    }
    let (mut from_bucket, last_bucket) = (message_bucket(after), message_bucket(upto));
    let (lo, hi) = (after.0 as i64, upto.0 as i64);
    loop {
        let qr = db
            .session
            .execute_unpaged(
                &db.st.since_buckets,
                (group.as_str(), from_bucket, last_bucket, BUCKET_PAGE),
            )
            .await
            .map_err(unavailable)?;
        let buckets: Vec<i32> = rows::<(i32,)>(qr)?.into_iter().map(|(b,)| b).collect();
        for &b in &buckets {
            let want = (limit - out.len()).min(i32::MAX as usize) as i32;
            let values = (group.as_str(), b, lo, hi, want);
            let messages = message_page(db, group, &db.st.since_page, values).await?;
            let qr = db
                .session
                .execute_unpaged(&db.st.since_reads, values)
                .await
                .map_err(unavailable)?;
            let reads = rows::<(i64, i64, i64)>(qr)?
                .into_iter()
                .map(|(id, message, user)| ReadReceipt {
                    id: MessageId(id as u64),
                    group: group.clone(),
                    message: MessageId(message as u64),
                    user: UserId(user as u64),
                })
                .collect();
            out.extend(merge_events(messages, reads, want as usize));
            if out.len() >= limit {
                return Ok(out);
            }
        }
        match buckets.last() {
            Some(&last) if buckets.len() == BUCKET_PAGE as usize && last < last_bucket => {
                from_bucket = last + 1
            }
            _ => return Ok(out),
        }
    }
}

async fn pending_notices(db: &Db, limit: usize, ts: i64) -> Result<Vec<Notice>, Error> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let qr = db
        .session
        .execute_unpaged(&db.st.notice_buckets, ())
        .await
        .map_err(unavailable)?;
    let buckets: Vec<i64> = rows::<(i64,)>(qr)?.into_iter().map(|(b,)| b).collect();
    let now_bucket = now_millis().div_euclid(NOTICE_BUCKET_MS);
    let grace_buckets = NOTICE_BUCKET_GRACE_MS / NOTICE_BUCKET_MS;
    for b in buckets {
        let want = (limit - out.len()).min(i32::MAX as usize) as i32;
        let qr = db
            .session
            .execute_unpaged(&db.st.notices_in, (b, want))
            .await
            .map_err(unavailable)?;
        let found = rows::<(i64, i64, String, i64, i64)>(qr)?;
        if found.is_empty() && b + grace_buckets < now_bucket {
            // Drained, and no write stamped inside it can still arrive: drop it from the index
            // so later polls skip its tombstones.
            db.session
                .execute_unpaged(&db.st.delete_notice_bucket, (ts, b))
                .await
                .map_err(unavailable)?;
        }
        out.extend(
            found
                .into_iter()
                .map(|(id, user, group, message, created)| Notice {
                    id: NoticeId(id as u64),
                    user: UserId(user as u64),
                    group: GroupId::new(group),
                    message: MessageId(message as u64),
                    created,
                }),
        );
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

async fn fail_notice(db: &Db, id: NoticeId, reason: &str, ts: i64) -> Result<(), Error> {
    let bucket = notice_bucket(id);
    let qr = db
        .session
        .execute_unpaged(&db.st.get_notice, (bucket, id.0 as i64))
        .await
        .map_err(unavailable)?;
    let Some((user, group, message, created)) = first::<(i64, String, i64, i64)>(qr)? else {
        return Ok(());
    };
    logged_batch(
        db,
        vec![
            (
                &db.st.insert_failed,
                vec![
                    big(id.0),
                    bigi(user),
                    text(&group),
                    bigi(message),
                    bigi(created),
                    text(reason),
                    bigi(now_millis()),
                    bigi(ts),
                ],
            ),
            (
                &db.st.delete_notice,
                vec![bigi(ts), bigi(bucket), big(id.0)],
            ),
        ],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_ids_time() {
        let a = MessageId::new(ID_EPOCH_MS + 5, 0, 0);
        let b = MessageId::new(ID_EPOCH_MS + MESSAGE_BUCKET_MS - 1, 255, 16383);
        let c = MessageId::new(ID_EPOCH_MS + MESSAGE_BUCKET_MS, 0, 0);
        assert_eq!(message_bucket(a), 0);
        assert_eq!(message_bucket(b), 0);
        assert_eq!(message_bucket(c), 1);
    }

    #[test]
    fn notice_ids_increase_and_find_their_bucket() {
        let mut clock = Clock { last: 0 };
        let t0 = clock.next();
        let t1 = clock.next();
        assert!(t1 > t0);
        let id = NoticeId((((t1 - ID_EPOCH_MS * 1000) as u64) << NOTICE_TAG_BITS) | 7);
        assert_eq!(notice_bucket(id), (t1 / 1000).div_euclid(NOTICE_BUCKET_MS));
    }

    #[test]
    fn consistency_names_parse() {
        assert_eq!(
            parse_consistency("local_quorum").unwrap(),
            Consistency::LocalQuorum
        );
        assert!(parse_consistency("MOST").is_err());
    }
}
