//! Acknowledgements: what a connection must do once a batch is written (advance
//! a resume position) runs only after every sink that took the batch wrote it,
//! and in the connection's batch order, so a position never passes an event
//! that some sink has not written yet.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Work to run once a batch is written everywhere (a position to record).
pub type OnWritten = Box<dyn FnOnce() + Send>;

/// One connection's acknowledgements, in batch order.
#[derive(Clone, Default)]
pub struct AckChain {
    inner: Arc<Mutex<Chain>>,
}

#[derive(Default)]
struct Chain {
    /// Sequence number of `pending[0]`.
    front: u64,
    pending: VecDeque<Slot>,
}

enum Slot {
    /// Some sink still holds the batch.
    Waiting(Option<OnWritten>),
    /// Written everywhere (or lost: then its work is `None`), waiting for
    /// an older batch.
    Done(Option<OnWritten>),
}

impl std::fmt::Debug for AckChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self.inner.lock().map(|c| c.pending.len()).unwrap_or(0);
        f.debug_struct("AckChain").field("pending", &pending).finish()
    }
}

impl AckChain {
    /// Registers the next batch; `work` runs once it and every earlier batch
    /// are acknowledged. `None` when there is nothing to wait for (no work,
    /// no earlier batch pending), so a source without positions pays nothing.
    pub fn batch(&self, work: Option<OnWritten>) -> Option<BatchAck> {
        let mut chain = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if work.is_none() && chain.pending.is_empty() {
            return None;
        }
        let seq = chain.front + chain.pending.len() as u64;
        chain.pending.push_back(Slot::Waiting(work));
        Some(BatchAck(Arc::new(AckInner { chain: self.inner.clone(), seq, lost: AtomicBool::new(false) })))
    }

    /// Batches registered and not yet acknowledged in order.
    pub fn pending(&self) -> usize {
        self.inner.lock().map(|c| c.pending.len()).unwrap_or(0)
    }
}

/// A batch's acknowledgement. Each sink that takes the batch holds a clone
/// and drops it once the batch is written; the last drop acknowledges.
#[derive(Clone)]
pub struct BatchAck(Arc<AckInner>);

impl std::fmt::Debug for BatchAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchAck").field("seq", &self.0.seq).finish()
    }
}

impl BatchAck {
    /// A sink lost (some of) the batch for good: its work must not run, so
    /// its position is not recorded as delivered.
    pub fn lost(&self) {
        self.0.lost.store(true, Ordering::Release);
    }
}

struct AckInner {
    chain: Arc<Mutex<Chain>>,
    seq: u64,
    lost: AtomicBool,
}

impl Drop for AckInner {
    fn drop(&mut self) {
        let mut ready = Vec::new();
        {
            let mut chain = self.chain.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(at) = self.seq.checked_sub(chain.front) else { return };
            let Some(slot) = chain.pending.get_mut(at as usize) else { return };
            let work = match slot {
                Slot::Waiting(work) => work.take(),
                Slot::Done(_) => None,
            };
            *slot = Slot::Done(if self.lost.load(Ordering::Acquire) { None } else { work });
            while let Some(Slot::Done(_)) = chain.pending.front() {
                if let Some(Slot::Done(work)) = chain.pending.pop_front() {
                    ready.extend(work);
                }
                chain.front += 1;
            }
        }
        // Run outside the lock: the work takes other locks (a position store).
        for work in ready {
            work();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> (Arc<Mutex<Vec<u32>>>, impl Fn(u32) -> Option<OnWritten>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        (log, move |n| {
            let l = l.clone();
            Some(Box::new(move || l.lock().unwrap().push(n)) as OnWritten)
        })
    }

    #[test]
    fn work_runs_in_batch_order_once_every_holder_dropped() {
        let chain = AckChain::default();
        let (log, work) = recorder();
        let a = chain.batch(work(1)).unwrap();
        let a_other_sink = a.clone();
        let b = chain.batch(work(2)).unwrap();
        drop(b);
        assert!(log.lock().unwrap().is_empty(), "batch 2 waits for batch 1");
        drop(a);
        assert!(log.lock().unwrap().is_empty(), "batch 1 waits for its second sink");
        drop(a_other_sink);
        assert_eq!(*log.lock().unwrap(), [1, 2]);
        assert_eq!(chain.pending(), 0);
    }

    #[test]
    fn a_lost_batch_skips_its_work_but_not_the_next() {
        let chain = AckChain::default();
        let (log, work) = recorder();
        let a = chain.batch(work(1)).unwrap();
        let b = chain.batch(work(2)).unwrap();
        a.lost();
        drop(a);
        drop(b);
        assert_eq!(*log.lock().unwrap(), [2]);
    }

    #[test]
    fn batches_without_work_cost_nothing_unless_something_waits() {
        let chain = AckChain::default();
        assert!(chain.batch(None).is_none());
        let (log, work) = recorder();
        let a = chain.batch(work(1)).unwrap();
        let plain = chain.batch(None).expect("must wait behind batch 1");
        let c = chain.batch(work(3)).unwrap();
        drop(c);
        drop(a);
        assert_eq!(*log.lock().unwrap(), [1]);
        drop(plain);
        assert_eq!(*log.lock().unwrap(), [1, 3]);
    }
}
