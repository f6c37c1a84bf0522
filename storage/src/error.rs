use crate::model::{GroupId, MessageId};

/// Why a storage request failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The group does not exist.
    #[error("group {0} does not exist")]
    NoSuchGroup(GroupId),
    /// The message does not exist in that group.
    #[error("message {message} does not exist in group {group}")]
    NoSuchMessage { group: GroupId, message: MessageId },
    /// The backend's request queue is full; nothing was done. Retry later.
    #[error("the store is overloaded (request queue full); nothing was written")]
    Overloaded,
    /// The backend could not do the work (disk, database unreachable, ...). The request may or
    /// may not have taken effect only where the request's documentation says so.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The backend has shut down.
    #[error("the store has shut down")]
    Closed,
}
