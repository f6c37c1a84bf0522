//! Bounded, lock-free inboxes between shards.
//!
//! Each shard owns one [`Inbox`]; every shard (and any other thread) holds an [`InboxHandle`]
//! to it. Sending never blocks: a full inbox hands the message back, and the sender decides
//! (the gateway keeps an ordered overflow per destination and retries). After a send, the
//! receiver's waker is woken: a receiver that is busy is not registered and the wake costs one
//! atomic operation; a receiver sleeping in its reactor is woken through its executor.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures::task::AtomicWaker;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

/// The sending side of one shard's inbox. Cheap to clone, `Send`.
pub struct InboxHandle<T> {
    tx: Sender<T>,
    waker: Arc<AtomicWaker>,
}

impl<T> Clone for InboxHandle<T> {
    fn clone(&self) -> Self {
        InboxHandle {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<T> InboxHandle<T> {
    /// Queues `msg` and wakes the receiver; hands `msg` back if the inbox is full or gone.
    pub fn try_send(&self, msg: T) -> Result<(), T> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.waker.wake();
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
    waker: Arc<AtomicWaker>,
}

impl<T> Inbox<T> {
    /// Moves up to `max` waiting messages into `out`, waiting (without spinning) until at least
    /// one is there. Returns how many were moved; 0 only when every sender is gone.
    pub async fn recv_batch(&self, out: &mut Vec<T>, max: usize) -> usize {
        poll_fn(|cx| {
            let n = self.drain(out, max);
            if n > 0 {
                return Poll::Ready(n);
            }
            self.waker.register(cx.waker());
            // A message sent between the drain and the registration would find no waker:
            // look again after registering.
            let n = self.drain(out, max);
            if n > 0 || self.rx.is_empty() && self.is_disconnected() {
                return Poll::Ready(n);
            }
            Poll::Pending
        })
        .await
    }

    /// Moves up to `max` waiting messages into `out` without waiting.
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

    fn is_disconnected(&self) -> bool {
        // The inbox holds no sender of its own; when all handles are dropped, try_recv reports
        // Disconnected.
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

/// Creates `nr_shards` inboxes of `capacity` messages each, and the handles to all of them
/// (index = shard).
pub fn mesh<T>(nr_shards: usize, capacity: usize) -> (Vec<Inbox<T>>, Vec<InboxHandle<T>>) {
    let mut inboxes = Vec::with_capacity(nr_shards);
    let mut handles = Vec::with_capacity(nr_shards);
    for _ in 0..nr_shards {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let waker = Arc::new(AtomicWaker::new());
        inboxes.push(Inbox {
            rx,
            waker: waker.clone(),
        });
        handles.push(InboxHandle { tx, waker });
    }
    (inboxes, handles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_inbox_hands_the_message_back() {
        let (_inboxes, handles) = mesh::<u32>(1, 2);
        assert!(handles[0].try_send(1).is_ok());
        assert!(handles[0].try_send(2).is_ok());
        assert_eq!(handles[0].try_send(3), Err(3));
    }

    #[test]
    fn a_sleeping_receiver_is_woken_by_another_thread() {
        let (mut inboxes, handles) = mesh::<u32>(1, 16);
        let inbox = inboxes.pop().unwrap();
        let h = handles[0].clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            h.try_send(7).unwrap();
        });
        let mut out = Vec::new();
        let n = futures::executor::block_on(inbox.recv_batch(&mut out, 8));
        assert_eq!((n, out), (1, vec![7]));
        t.join().unwrap();
    }
}
