//! Thread per core: the node runs one single-threaded tokio runtime per worker thread, each
//! with its own listening socket (`SO_REUSEPORT`), so that a connection lives its whole life
//! on the worker that accepted it, and a publication reaches another worker's subscribers
//! with one wake of that worker, not one per subscriber.
//!
//! Why not tokio's multi-threaded runtime: its tasks move between threads, and a delivery
//! from one thread wakes each subscriber's task wherever the scheduler put it, parking and
//! unparking the other worker (a futex or an eventfd write per subscriber when it sleeps).
//! Measured, two of its workers cost 1.2-1.4× the CPU per delivery of one (BENCHMARKS.md).
//!
//! How a delivery reaches a subscriber on another worker: the publisher's thread still queues
//! the message on the connection itself (that keeps the broker's order and recovery barrier:
//! when `dispatch` returns, every subscriber's queue holds the message), but instead of waking
//! the connection's task across threads it hands the task's waker to its worker's list
//! ([`wake`]); the worker's own task ([`run_wakes`]) wakes them all from their thread, where a
//! wake is a push onto the local run queue. While that list is not yet drained, further
//! hand-offs cost no wake at all: under load, a worker is woken once per batch of deliveries.
//!
//! No crate does this hand-off: tokio offers thread-per-core runtimes (`current_thread`) but
//! no way to batch wakes across them.

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use std::cell::Cell;
use std::sync::OnceLock;
use std::task::{Poll, Waker};

/// A worker's index; [`NONE`] off the workers (tests that build a node in-process).
pub type WorkerId = u32;

/// Not a worker thread.
pub const NONE: WorkerId = WorkerId::MAX;

/// Wakers handed to one worker by other threads.
#[derive(Default)]
struct Slot {
    pending: Mutex<Vec<Waker>>,
    task: AtomicWaker,
}

static SLOTS: OnceLock<Box<[Slot]>> = OnceLock::new();

thread_local! {
    static CURRENT: Cell<WorkerId> = const { Cell::new(NONE) };
}

/// Sets up `count` workers' hand-off lists (once per process; later calls change nothing).
pub fn install(count: usize) {
    let _ = SLOTS.get_or_init(|| (0..count).map(|_| Slot::default()).collect());
}

/// Marks the calling thread as worker `index`.
fn enter(index: WorkerId) {
    CURRENT.with(|c| c.set(index));
}

/// The worker the calling thread is, or [`NONE`].
pub fn current() -> WorkerId {
    CURRENT.with(Cell::get)
}

/// Wakes the task registered in `waker`, which lives on worker `owner`: directly when the
/// caller is that worker (or not on any, or `owner` is [`NONE`]); otherwise the waker goes to
/// the owner's list, and the owner is woken only if the list was empty.
pub fn wake(owner: WorkerId, waker: &AtomicWaker) {
    let here = current();
    let slot = match SLOTS.get() {
        Some(slots) if owner != here && here != NONE => slots.get(owner as usize),
        _ => None,
    };
    let Some(slot) = slot else {
        waker.wake();
        return;
    };
    // `take` leaves nothing to wake when the task is not waiting (it then sees the signal
    // its owner set before calling this on its next turn), and when it is registering right
    // now the registering side wakes itself.
    let Some(task) = waker.take() else {
        return;
    };
    let first = {
        let mut pending = slot.pending.lock();
        pending.push(task);
        pending.len() == 1
    };
    if first {
        slot.task.wake();
    }
}

/// Marks the calling thread as worker `index` and builds its runtime (single-threaded, I/O
/// and timers on), with the worker's hand-off task already spawned on it.
pub fn runtime(index: WorkerId) -> std::io::Result<tokio::runtime::Runtime> {
    enter(index);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.spawn(run_wakes(index));
    Ok(runtime)
}

/// Worker `index`'s hand-off task: wakes, from this thread, every task other threads handed
/// over. Runs until its runtime ends.
async fn run_wakes(index: WorkerId) {
    let Some(slot) = SLOTS.get().and_then(|s| s.get(index as usize)) else {
        return;
    };
    let mut batch: Vec<Waker> = Vec::new();
    std::future::poll_fn(|cx| {
        loop {
            slot.task.register(cx.waker());
            std::mem::swap(&mut *slot.pending.lock(), &mut batch);
            if batch.is_empty() {
                return Poll::<()>::Pending;
            }
            for waker in batch.drain(..) {
                waker.wake();
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// A task on worker 0's runtime, woken once from worker 1's thread after it started
    /// waiting, runs again: through worker 0's hand-off task.
    #[test]
    fn a_wake_from_another_worker_reaches_the_task() {
        install(2);
        let waker = Arc::new(AtomicWaker::new());
        let waiting = Arc::new(AtomicBool::new(false));
        let woken = Arc::new(AtomicBool::new(false));
        let runtime = runtime(0).unwrap();
        let (w, waiting2, woken2) = (waker.clone(), waiting.clone(), woken.clone());
        let other = std::thread::spawn(move || {
            enter(1);
            while !waiting2.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            woken2.store(true, Ordering::Release);
            wake(0, &w);
        });
        let done = runtime.block_on(async {
            // Let the hand-off task start waiting with nothing to do first.
            tokio::task::yield_now().await;
            let task = std::future::poll_fn(|cx| {
                waker.register(cx.waker());
                waiting.store(true, Ordering::Release);
                if woken.load(Ordering::Acquire) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            // The deadline first: its own wake must not let the task pass.
            tokio::select! {
                biased;
                _ = tokio::time::sleep(Duration::from_secs(30)) => false,
                _ = task => true,
            }
        });
        other.join().unwrap();
        assert!(done, "the task was never woken");
    }
}
