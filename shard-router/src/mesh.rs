//! Bounded, lock-free inboxes between shards, with a doorbell to wake a sleeping shard.
//!
//! Each shard owns one [`Inbox`]; every shard (and any other thread) holds an [`InboxHandle`]
//! to it. Sending never blocks: a full inbox hands the message back, and the sender decides
//! (the gateway keeps an ordered overflow per destination and retries).
//!
//! Waking: a shard with nothing to do [arms](Inbox::arm) its doorbell and waits for the
//! doorbell's socket to become readable, inside its reactor (an ordinary I/O wait, no
//! spinning). A sender that finds the doorbell armed disarms it and writes one byte to it: one
//! system call per sleep/wake cycle, none while the receiver is busy. The arm/check/ring
//! protocol uses sequentially consistent atomics so that a message sent while the receiver
//! goes to sleep is never missed:
//!
//! - receiver: `armed = true`, then look at the queue again; sleep only if it is still empty.
//! - sender: push, then `if armed.swap(false) { ring }`.
//!
//! The doorbell is a plain socket rather than the runtime's cross-thread waker because the
//! runtime's remote wake-ups can be missed by an executor that is about to sleep.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

struct Doorbell {
    armed: AtomicBool,
    ringer: UnixStream,
}

impl Doorbell {
    fn ring(&self) {
        if self.armed.swap(false, SeqCst) {
            // Non-blocking; a full socket buffer means the receiver is being woken already.
            let _ = (&self.ringer).write(&[1]);
        }
    }
}

/// The sending side of one shard's inbox. Cheap to clone, `Send`.
pub struct InboxHandle<T> {
    tx: Sender<T>,
    bell: Arc<Doorbell>,
}

impl<T> Clone for InboxHandle<T> {
    fn clone(&self) -> Self {
        InboxHandle {
            tx: self.tx.clone(),
            bell: self.bell.clone(),
        }
    }
}

impl<T> InboxHandle<T> {
    /// Queues `msg` and wakes the receiver if it sleeps; hands `msg` back if the inbox is full
    /// or gone.
    pub fn try_send(&self, msg: T) -> Result<(), T> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.bell.ring();
                Ok(())
            }
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(m),
        }
    }

    /// Messages waiting in the inbox.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

/// The receiving side of one shard's inbox.
pub struct Inbox<T> {
    rx: Receiver<T>,
    bell: Arc<Doorbell>,
    listener: Option<UnixStream>,
}

impl<T> Inbox<T> {
    /// Moves up to `max` waiting messages into `out` without waiting; returns how many.
    pub fn drain(&self, out: &mut Vec<T>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.rx.try_recv() {
                Ok(m) => {
                    out.push(m);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        n
    }

    /// Prepares to sleep. Returns true when the inbox is still empty after arming: the caller
    /// may now wait for the doorbell to become readable. Returns false when a message arrived
    /// meanwhile (the doorbell is disarmed again): drain instead of sleeping.
    pub fn arm(&self) -> bool {
        self.bell.armed.store(true, SeqCst);
        if self.rx.is_empty() {
            true
        } else {
            self.bell.armed.store(false, SeqCst);
            false
        }
    }

    /// The doorbell's receiving socket (non-blocking), for the shard's reactor to wait on.
    /// Read and discard whatever it holds after each wake-up. Given out once.
    pub fn take_doorbell(&mut self) -> Option<UnixStream> {
        self.listener.take()
    }

    /// True when every sender is gone and nothing is left.
    pub fn is_closed(&self) -> bool {
        matches!(
            self.rx.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// Every shard's inbox, and handles to all of them (index = shard).
pub type Mesh<T> = (Vec<Inbox<T>>, Vec<InboxHandle<T>>);

/// Creates `nr_shards` inboxes of `capacity` messages each, and the handles to all of them.
pub fn mesh<T>(nr_shards: usize, capacity: usize) -> std::io::Result<Mesh<T>> {
    let mut inboxes = Vec::with_capacity(nr_shards);
    let mut handles = Vec::with_capacity(nr_shards);
    for _ in 0..nr_shards {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let (ringer, listener) = UnixStream::pair()?;
        ringer.set_nonblocking(true)?;
        listener.set_nonblocking(true)?;
        let bell = Arc::new(Doorbell {
            armed: AtomicBool::new(false),
            ringer,
        });
        inboxes.push(Inbox {
            rx,
            bell: bell.clone(),
            listener: Some(listener),
        });
        handles.push(InboxHandle { tx, bell });
    }
    Ok((inboxes, handles))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn full_inbox_hands_the_message_back() {
        let (_inboxes, handles) = mesh::<u32>(1, 2).unwrap();
        assert!(handles[0].try_send(1).is_ok());
        assert!(handles[0].try_send(2).is_ok());
        assert_eq!(handles[0].try_send(3), Err(3));
    }

    #[test]
    fn a_sleeping_receiver_is_rung_by_another_thread() {
        let (mut inboxes, handles) = mesh::<u32>(1, 16).unwrap();
        let mut inbox = inboxes.pop().unwrap();
        let bell = inbox.take_doorbell().unwrap();
        bell.set_nonblocking(false).unwrap();
        assert!(inbox.arm(), "empty inbox: safe to sleep");
        let h = handles[0].clone();
        let t = std::thread::spawn(move || h.try_send(7).unwrap());
        let mut byte = [0u8; 8];
        assert!((&bell).read(&mut byte).unwrap() >= 1, "the sender rang");
        let mut out = Vec::new();
        assert_eq!(inbox.drain(&mut out, 8), 1);
        assert_eq!(out, vec![7]);
        t.join().unwrap();
    }

    #[test]
    fn a_busy_receiver_is_not_rung_and_arming_sees_late_messages() {
        let (inboxes, handles) = mesh::<u32>(1, 16).unwrap();
        handles[0].try_send(1).unwrap();
        assert!(!inboxes[0].arm(), "a message is waiting: do not sleep");
        assert!(!inboxes[0].bell.armed.load(SeqCst));
    }
}
