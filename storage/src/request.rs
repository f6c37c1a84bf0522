//! The one interface between callers and backends: a request enum with typed replies.

use crate::error::Error;
use crate::model::*;
use crossbeam_channel::{Sender, TrySendError};

/// Called exactly once by the backend with the outcome, on one of the backend's threads. It must
/// not block for long: it typically pushes the result into the caller's queue and wakes it.
pub type Reply<T> = Box<dyn FnOnce(Result<T, Error>) + Send>;

/// One unit of work for a backend. A backend applies requests in the order it receives them
/// from one caller's queue position: replies to writes come only after the write is durable.
pub enum Request {
    /// Creates or replaces a user's profile.
    PutUser { user: User, reply: Reply<()> },
    GetUser {
        user: UserId,
        reply: Reply<Option<User>>,
    },
    /// Creates the group or replaces its name and members; replies with who was added and who
    /// removed relative to the previous member list.
    PutGroup {
        group: Group,
        reply: Reply<MembershipChange>,
    },
    GetGroup {
        group: GroupId,
        reply: Reply<Option<Group>>,
    },
    /// Adds a member; `Ok(true)` when added, `Ok(false)` when already a member,
    /// `Err(NoSuchGroup)` when the group does not exist.
    AddMember {
        group: GroupId,
        user: UserId,
        reply: Reply<bool>,
    },
    /// Removes a member; `Ok(true)` when removed, `Ok(false)` when not a member.
    RemoveMember {
        group: GroupId,
        user: UserId,
        reply: Reply<bool>,
    },
    /// The groups `user` is a member of, ascending (byte order of the ids' UTF-8).
    GroupsOfUser {
        user: UserId,
        reply: Reply<Vec<GroupId>>,
    },
    /// [`Request::GroupsOfUser`] for several users in one request: one answer per user, in
    /// the order of `users` (the shards merge the loads of many connects into one).
    GroupsOfUsers {
        users: Vec<UserId>,
        reply: Reply<Vec<Vec<GroupId>>>,
    },
    /// Stores a message and, in the same atomic write, one outbox notice per user in `notify`.
    /// If the message carries a `client_msg_id` already stored for the same group and sender,
    /// nothing is written and the original is returned with `duplicate: true`.
    AppendMessage {
        message: NewMessage,
        notify: Vec<UserId>,
        reply: Reply<Appended>,
    },
    /// Adds `user` to the message's readers (no read-modify-write of a list);
    /// `Ok(true)` when added, `Ok(false)` when already there (the message's sender always is,
    /// see [`crate::with_sender`]), `Err(NoSuchMessage)` when the message is not in that group.
    /// When added, the receipt is also kept as event `event` of the group's stream
    /// ([`ReadReceipt`]), for [`Request::Since`].
    MarkRead {
        group: GroupId,
        message: MessageId,
        user: UserId,
        event: MessageId,
        reply: Reply<bool>,
    },
    GetMessage {
        group: GroupId,
        message: MessageId,
        reply: Reply<Option<StoredMessage>>,
    },
    /// Up to `limit` messages of the group, newest first, strictly older than `before` if given.
    History {
        group: GroupId,
        limit: usize,
        before: Option<MessageId>,
        reply: Reply<Vec<StoredMessage>>,
    },
    /// Up to `limit` events of the group (messages and read receipts) with ids in
    /// `(after, upto]`, oldest first: what a client that had reached `after` missed, up to the
    /// room's settled id `upto` (connection state recovery).
    Since {
        group: GroupId,
        after: MessageId,
        upto: MessageId,
        limit: usize,
        reply: Reply<Vec<GroupEvent>>,
    },
    /// Records the user's presence: online or offline since `at`.
    SetPresence {
        user: UserId,
        online: bool,
        at: Millis,
        reply: Reply<()>,
    },
    GetPresence {
        user: UserId,
        reply: Reply<Option<Presence>>,
    },
    /// Up to `limit` pending notices, oldest first.
    PendingNotices {
        limit: usize,
        reply: Reply<Vec<Notice>>,
    },
    /// Removes delivered notices, or notices that need no email any more.
    DeleteNotices {
        ids: Vec<NoticeId>,
        reply: Reply<()>,
    },
    /// Moves notices that can never be delivered (permanent SMTP failure, no such user) out of
    /// the pending set, keeping them with `reason` for operators.
    FailNotices {
        ids: Vec<NoticeId>,
        reason: String,
        reply: Reply<()>,
    },
    /// Counts notices moved aside by `FailNotices`.
    FailedNoticeCount { reply: Reply<u64> },
    /// Answers `Ok` when the backend can reach its storage (readiness).
    Ping { reply: Reply<()> },
    /// Several requests handed over at once (one queue slot, one wake-up of the backend);
    /// applied exactly as if submitted one by one in this order.
    Batch(Vec<Request>),
}

impl Request {
    /// Fails the request without doing it (used when it cannot be queued or the backend stops).
    pub fn fail(self, err: Error) {
        match self {
            Request::PutUser { reply, .. } => reply(Err(err)),
            Request::GetUser { reply, .. } => reply(Err(err)),
            Request::PutGroup { reply, .. } => reply(Err(err)),
            Request::GetGroup { reply, .. } => reply(Err(err)),
            Request::AddMember { reply, .. } => reply(Err(err)),
            Request::RemoveMember { reply, .. } => reply(Err(err)),
            Request::GroupsOfUser { reply, .. } => reply(Err(err)),
            Request::GroupsOfUsers { reply, .. } => reply(Err(err)),
            Request::AppendMessage { reply, .. } => reply(Err(err)),
            Request::MarkRead { reply, .. } => reply(Err(err)),
            Request::GetMessage { reply, .. } => reply(Err(err)),
            Request::History { reply, .. } => reply(Err(err)),
            Request::Since { reply, .. } => reply(Err(err)),
            Request::SetPresence { reply, .. } => reply(Err(err)),
            Request::GetPresence { reply, .. } => reply(Err(err)),
            Request::PendingNotices { reply, .. } => reply(Err(err)),
            Request::DeleteNotices { reply, .. } => reply(Err(err)),
            Request::FailNotices { reply, .. } => reply(Err(err)),
            Request::FailedNoticeCount { reply, .. } => reply(Err(err)),
            Request::Ping { reply, .. } => reply(Err(err)),
            Request::Batch(reqs) => {
                for r in reqs {
                    r.fail(err.clone());
                }
            }
        }
    }

    /// The requests this stands for, in order: itself, or a batch's contents.
    pub fn flatten(self, out: &mut Vec<Request>) {
        match self {
            Request::Batch(reqs) => {
                for r in reqs {
                    r.flatten(out);
                }
            }
            r => out.push(r),
        }
    }

    /// True for requests that change stored data.
    pub fn is_write(&self) -> bool {
        if let Request::Batch(reqs) = self {
            return reqs.iter().any(Request::is_write);
        }
        !matches!(
            self,
            Request::GetUser { .. }
                | Request::GetGroup { .. }
                | Request::GroupsOfUser { .. }
                | Request::GroupsOfUsers { .. }
                | Request::GetMessage { .. }
                | Request::History { .. }
                | Request::Since { .. }
                | Request::GetPresence { .. }
                | Request::PendingNotices { .. }
                | Request::FailedNoticeCount { .. }
                | Request::Ping { .. }
        )
    }
}

/// A cheap, cloneable way into a backend. Safe to use from any thread, including a reactor:
/// [`StoreHandle::submit`] never blocks.
#[derive(Clone)]
pub struct StoreHandle {
    tx: Sender<Request>,
    name: &'static str,
}

impl StoreHandle {
    /// Wraps the sending side of a backend's bounded request queue.
    pub fn new(tx: Sender<Request>, name: &'static str) -> Self {
        StoreHandle { tx, name }
    }

    /// The backend's name (`embedded`, `scylla`).
    pub fn backend(&self) -> &'static str {
        self.name
    }

    /// Queues a request without blocking. When the queue is full the request is failed at once
    /// with [`Error::Overloaded`] (its reply is called on this thread); when the backend has
    /// stopped, with [`Error::Closed`].
    pub fn submit(&self, req: Request) {
        match self.tx.try_send(req) {
            Ok(()) => {}
            Err(TrySendError::Full(req)) => req.fail(Error::Overloaded),
            Err(TrySendError::Disconnected(req)) => req.fail(Error::Closed),
        }
    }

    /// Requests queued and not yet taken by the backend.
    pub fn queue_depth(&self) -> usize {
        self.tx.len()
    }

    /// A blocking facade for threads that may block (admin listener, notifier, tests). Never
    /// use it on a reactor.
    pub fn blocking(&self) -> Blocking<'_> {
        Blocking { store: self }
    }
}

/// Blocking calls over a [`StoreHandle`]; each waits for its reply.
pub struct Blocking<'a> {
    store: &'a StoreHandle,
}

impl Blocking<'_> {
    fn call<T: Send + 'static>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let req = make(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        // Blocking callers may wait for room in the queue instead of failing at once.
        if let Err(e) = self.store.tx.send(req) {
            e.into_inner().fail(Error::Closed);
        }
        rx.recv().map_err(|_| Error::Closed)?
    }

    pub fn put_user(&self, user: User) -> Result<(), Error> {
        self.call(|reply| Request::PutUser { user, reply })
    }
    pub fn get_user(&self, user: UserId) -> Result<Option<User>, Error> {
        self.call(|reply| Request::GetUser { user, reply })
    }
    pub fn put_group(&self, group: Group) -> Result<MembershipChange, Error> {
        self.call(|reply| Request::PutGroup { group, reply })
    }
    pub fn get_group(&self, group: GroupId) -> Result<Option<Group>, Error> {
        self.call(|reply| Request::GetGroup { group, reply })
    }
    pub fn add_member(&self, group: GroupId, user: UserId) -> Result<bool, Error> {
        self.call(|reply| Request::AddMember { group, user, reply })
    }
    pub fn remove_member(&self, group: GroupId, user: UserId) -> Result<bool, Error> {
        self.call(|reply| Request::RemoveMember { group, user, reply })
    }
    pub fn groups_of_user(&self, user: UserId) -> Result<Vec<GroupId>, Error> {
        self.call(|reply| Request::GroupsOfUser { user, reply })
    }
    pub fn groups_of_users(&self, users: Vec<UserId>) -> Result<Vec<Vec<GroupId>>, Error> {
        self.call(|reply| Request::GroupsOfUsers { users, reply })
    }
    pub fn append_message(
        &self,
        message: NewMessage,
        notify: Vec<UserId>,
    ) -> Result<Appended, Error> {
        self.call(|reply| Request::AppendMessage {
            message,
            notify,
            reply,
        })
    }
    pub fn mark_read(
        &self,
        group: GroupId,
        message: MessageId,
        user: UserId,
        event: MessageId,
    ) -> Result<bool, Error> {
        self.call(|reply| Request::MarkRead {
            group,
            message,
            user,
            event,
            reply,
        })
    }
    pub fn get_message(
        &self,
        group: GroupId,
        message: MessageId,
    ) -> Result<Option<StoredMessage>, Error> {
        self.call(|reply| Request::GetMessage {
            group,
            message,
            reply,
        })
    }
    pub fn history(
        &self,
        group: GroupId,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, Error> {
        self.call(|reply| Request::History {
            group,
            limit,
            before,
            reply,
        })
    }
    pub fn since(
        &self,
        group: GroupId,
        after: MessageId,
        upto: MessageId,
        limit: usize,
    ) -> Result<Vec<GroupEvent>, Error> {
        self.call(|reply| Request::Since {
            group,
            after,
            upto,
            limit,
            reply,
        })
    }
    pub fn set_presence(&self, user: UserId, online: bool, at: Millis) -> Result<(), Error> {
        self.call(|reply| Request::SetPresence {
            user,
            online,
            at,
            reply,
        })
    }
    pub fn get_presence(&self, user: UserId) -> Result<Option<Presence>, Error> {
        self.call(|reply| Request::GetPresence { user, reply })
    }
    pub fn pending_notices(&self, limit: usize) -> Result<Vec<Notice>, Error> {
        self.call(|reply| Request::PendingNotices { limit, reply })
    }
    pub fn delete_notices(&self, ids: Vec<NoticeId>) -> Result<(), Error> {
        self.call(|reply| Request::DeleteNotices { ids, reply })
    }
    pub fn fail_notices(&self, ids: Vec<NoticeId>, reason: String) -> Result<(), Error> {
        self.call(|reply| Request::FailNotices { ids, reason, reply })
    }
    pub fn failed_notice_count(&self) -> Result<u64, Error> {
        self.call(|reply| Request::FailedNoticeCount { reply })
    }
    pub fn ping(&self) -> Result<(), Error> {
        self.call(|reply| Request::Ping { reply })
    }
}
