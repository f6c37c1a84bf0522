//! The patched glommio (vendor/glommio/CORECAST.md) orders a shard's "about to sleep" flag
//! with fences instead of a process-wide barrier. A wake-up from another thread that raced
//! with the executor going to sleep and was missed would leave the executor asleep for good;
//! these round trips, each answered from another thread while the executor is somewhere
//! between running, deciding to sleep and sleeping, must all complete.
//!
//! What this can and cannot show: it fails if cross-thread wake-ups into the patched runtime
//! get lost often enough to hit in 20,000 tries. On x86 it does not catch the fences being
//! removed (checked): the wake-up queue's own locked instructions order both sides there.

use futures::channel::oneshot;
use glommio::LocalExecutorBuilder;
use std::sync::mpsc;
use std::time::Duration;

const ROUND_TRIPS: usize = 20_000;

#[test]
fn wakes_from_another_thread_always_reach_a_sleeping_executor() {
    let (to_helper, helper_rx) = mpsc::channel::<oneshot::Sender<usize>>();
    let helper = std::thread::spawn(move || {
        for (i, reply) in helper_rx.into_iter().enumerate() {
            // Vary how long the executor has been idle when the wake-up arrives, so some land
            // while it is still deciding whether to sleep and some after it has slept.
            for _ in 0..(i % 64) * 50 {
                std::hint::spin_loop();
            }
            let _ = reply.send(i);
        }
    });
    let (done_tx, done_rx) = mpsc::channel();
    let executor = LocalExecutorBuilder::default()
        .name("wake-test")
        .spawn(move || async move {
            let mut answered = 0;
            for i in 0..ROUND_TRIPS {
                let (tx, rx) = oneshot::channel();
                to_helper.send(tx).expect("the helper thread is alive");
                assert_eq!(rx.await.expect("the helper answers"), i);
                answered += 1;
            }
            done_tx.send(answered).expect("the test is waiting");
        })
        .expect("a glommio executor starts");
    let answered = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("every round trip completes: a wake-up from another thread was lost");
    assert_eq!(answered, ROUND_TRIPS);
    executor.join().expect("the executor finishes");
    helper.join().expect("the helper finishes");
}
