//! Group commit on SQLite's single writer: writes that arrive while the writer is busy share its next
//! transaction, so the cost of `BEGIN IMMEDIATE … COMMIT` (and of handing the writer connection over) is paid
//! once per batch instead of once per write.
//!
//! How a batch runs. The first write to find no open batch opens one and spawns its coordinator, which takes
//! the writer connection and begins the transaction. Writes arriving until the batch seals join it; they take
//! turns on the transaction in arrival order (a fair mutex), each running its whole write (events and state)
//! inside it. When no member is left to run, the coordinator seals the batch and commits; every member learns
//! the outcome. A member whose write fails — a domain error, a statement error, a sequence mismatch, or its
//! caller going away halfway — poisons the batch: the members after it skip their turn, the coordinator rolls
//! everything back, and every member tries again alone, the ordinary way, where its own outcome decides. So a
//! write is atomic and isolated exactly as before: what one member wrote is seen by the next one only because
//! both commit together or not at all, and nothing of a failed write survives.
//!
//! A write whose statements are known in full before it runs (a new aggregate's events and rows, nothing
//! read back) need not take a turn: it hands its statements to the batch ([`Member::submit`]), and the
//! coordinator runs everything handed in meanwhile in multi-statement round trips to the writer (eight
//! members each), the rows merged into multi-row inserts ([`crate::planned`]). On
//! SQLite's single writer the round trips and the hand-overs between turns are what a batch spends its time
//! on, so this is what lets a batch of creations run about as fast as one. A failure among them poisons the
//! batch like a failed turn, and every member tries again alone.
//!
//! Only the first try of a write goes through a batch; retries after a collision run alone.

use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, TransactionTrait};
use tokio::sync::{Mutex, Notify, OwnedMappedMutexGuard, OwnedMutexGuard, mpsc, watch};

use crate::backend::{self, Backend};
use crate::planned::{self, PlannedStatement};

/// Most writes one transaction carries; a batch under continuous load ends here so its members hear soon.
pub(crate) const MAX_MEMBERS: usize = 64;

/// The batches of one writer connection.
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
}

struct Shared {
    writer: DatabaseConnection,
    /// The batch new writes join; `None` when the last one sealed or filled up.
    open: RwLock<Option<Arc<Batch>>>,
    max_members: usize,
}

/// One shared transaction and the writes in it.
struct Batch {
    /// The transaction, held by whoever's turn it is; the coordinator holds it first, while it begins.
    slot: Arc<Mutex<Slot>>,
    /// Members that joined and have not finished their turn (or left without one).
    pending: AtomicUsize,
    /// Members that joined, ever; the batch takes no more at `max_members`.
    joined: AtomicUsize,
    /// A member failed: nothing of this batch may commit.
    poisoned: AtomicBool,
    /// A member's write is in the transaction: later members see more than committed state.
    written: AtomicBool,
    /// Statements handed in by members that take no turn ([`Member::submit`]), in arrival order; each
    /// member's are still counted in `pending` until the coordinator has run them.
    submitted: mpsc::UnboundedSender<Vec<PlannedStatement>>,
    /// Woken whenever a member finishes or hands in statements, for the coordinator to check whether it
    /// has statements to run or may seal.
    finished: Notify,
    /// `Some(true)` once committed, `Some(false)` once rolled back or failed to begin.
    outcome: watch::Sender<Option<bool>>,
}

/// What the shared transaction is at the moment.
enum Slot {
    /// The coordinator has not begun yet (it holds the lock meanwhile, so no member sees this).
    Starting,
    /// Open for members' writes.
    Open(DatabaseTransaction),
    /// Beginning failed, or the coordinator has taken the transaction to end it.
    Closed,
}

impl GroupCommit {
    /// Batches of at most `max_members` writes over the single `writer` connection of a SQLite file.
    pub(crate) fn new(writer: DatabaseConnection, max_members: usize) -> Self {
        let max_members = max_members.max(1);
        Self { shared: Arc::new(Shared { writer, open: RwLock::new(None), max_members }) }
    }

    /// Joins the open batch, or opens one (spawning its coordinator) when there is none.
    pub(crate) fn join(&self) -> Member {
        let shared = &self.shared;
        let mut open = shared.open.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(batch) = open.as_ref() {
            batch.pending.fetch_add(1, Ordering::AcqRel);
            let joined = batch.joined.fetch_add(1, Ordering::AcqRel) + 1;
            let batch = Arc::clone(batch);
            if joined >= shared.max_members {
                // Full: it still runs and commits; the next write opens the next batch.
                *open = None;
            }
            return Member { batch, started: false, finished: false };
        }
        let slot = Arc::new(Mutex::new(Slot::Starting));
        // A new mutex is free, so this takes it at once. The coordinator keeps it until the transaction has
        // begun; members queue behind it (in arrival order) and never see `Starting`.
        let held = Arc::clone(&slot).try_lock_owned().ok();
        let (submitted, handed_in) = mpsc::unbounded_channel();
        let batch = Arc::new(Batch {
            slot,
            pending: AtomicUsize::new(1),
            joined: AtomicUsize::new(1),
            poisoned: AtomicBool::new(false),
            written: AtomicBool::new(false),
            submitted,
            finished: Notify::new(),
            outcome: watch::channel(None).0,
        });
        if shared.max_members > 1 {
            *open = Some(Arc::clone(&batch));
        }
        drop(open);
        tokio::spawn(coordinate(Arc::clone(shared), Arc::clone(&batch), held, handed_in));
        Member { batch, started: false, finished: false }
    }
}

impl Shared {
    /// Seals `batch` when no member is left to run; answers whether it did.
    fn try_seal(&self, batch: &Arc<Batch>) -> bool {
        let mut open = self.open.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if batch.pending.load(Ordering::Acquire) != 0 {
            return false;
        }
        if open.as_ref().is_some_and(|b| Arc::ptr_eq(b, batch)) {
            *open = None;
        }
        true
    }
}

/// Begins the batch's transaction, waits for its members, and commits (or rolls back) for all of them.
async fn coordinate(
    shared: Arc<Shared>,
    batch: Arc<Batch>,
    held: Option<OwnedMutexGuard<Slot>>,
    mut handed_in: mpsc::UnboundedReceiver<Vec<PlannedStatement>>,
) {
    if let Some(mut held) = held {
        let options = backend::write_transaction_options(Backend::Sqlite);
        *held = match shared.writer.begin_with_options(options).await {
            Ok(txn) => Slot::Open(txn),
            Err(err) => {
                // Every member tries again alone and reports what it meets there.
                tracing::debug!(error = %err, "group commit could not begin");
                Slot::Closed
            }
        };
    }
    loop {
        let submitted = std::iter::from_fn(|| handed_in.try_recv().ok()).collect::<Vec<_>>();
        if !submitted.is_empty() {
            run_submitted(&batch, submitted).await;
            continue;
        }
        if shared.try_seal(&batch) {
            break;
        }
        batch.finished.notified().await;
    }
    let slot = std::mem::replace(&mut *batch.slot.lock().await, Slot::Closed);
    let committed = match slot {
        Slot::Open(txn) if !batch.poisoned.load(Ordering::Acquire) => match txn.commit().await {
            Ok(()) => true,
            Err(err) => {
                tracing::debug!(error = %err, "group commit failed; its writes are tried again one by one");
                false
            }
        },
        Slot::Open(txn) => {
            if let Err(err) = txn.rollback().await {
                tracing::debug!(error = %err, "rollback of a poisoned batch failed");
            }
            false
        }
        Slot::Starting | Slot::Closed => false,
    };
    batch.outcome.send_replace(Some(committed));
}

/// Most members whose statements share one round trip. The driver caches each distinct query text of a
/// round trip with its prepared statements (100 texts per connection), and that text depends on how many
/// members it carries and on the shapes of their writes: the bound keeps the number of texts, and so the
/// cache, small at the cost of one more round trip per eight members.
const MAX_COMBINED: usize = 8;

/// Runs the statements members handed in, up to [`MAX_COMBINED`] members per round trip with their rows
/// merged (see [`crate::planned`]), when it is their turn on the transaction (after the member writes
/// already waiting for it); a failure poisons the batch and skips the rest.
async fn run_submitted(batch: &Batch, submitted: Vec<Vec<PlannedStatement>>) {
    let members = submitted.len();
    let slot = batch.slot.lock().await;
    if let Slot::Open(txn) = &*slot {
        let mut rest = submitted.into_iter().peekable();
        while rest.peek().is_some() && !batch.poisoned.load(Ordering::Acquire) {
            let combined = planned::combine_for_sqlite(rest.by_ref().take(MAX_COMBINED).flatten());
            let flag = match txn.execute_raw(combined).await {
                Ok(_) => &batch.written,
                Err(err) => {
                    tracing::debug!(error = %err, members, "submitted writes failed; each is tried again alone");
                    &batch.poisoned
                }
            };
            flag.store(true, Ordering::Release);
        }
    }
    // Poisoned, or never begun: nothing (more) runs and nothing commits; the members learn it from the
    // outcome.
    drop(slot);
    batch.pending.fetch_sub(members, Ordering::AcqRel);
}

/// One write's place in a batch. Dropping it mid-turn (the caller went away) poisons the batch, since part
/// of the write may already be in the transaction.
pub(crate) struct Member {
    batch: Arc<Batch>,
    started: bool,
    finished: bool,
}

/// A member's turn on the open shared transaction.
pub(crate) struct Turn {
    txn: OwnedMappedMutexGuard<Slot, DatabaseTransaction>,
    first: bool,
}

impl Turn {
    /// The shared transaction.
    pub(crate) fn txn(&self) -> &DatabaseTransaction {
        &self.txn
    }

    /// Whether no other write is in the transaction yet: this try sees exactly the committed state.
    pub(crate) fn first(&self) -> bool {
        self.first
    }
}

impl Member {
    /// Waits for this member's turn; `None` when the batch cannot take its write any more (it failed to
    /// begin, or an earlier member poisoned it): the write then runs alone after [`Member::leave`].
    pub(crate) async fn turn(&mut self) -> Option<Turn> {
        let slot = Arc::clone(&self.batch.slot).lock_owned().await;
        if self.batch.poisoned.load(Ordering::Acquire) {
            return None;
        }
        let txn = OwnedMutexGuard::try_map(slot, |slot| match slot {
            Slot::Open(txn) => Some(txn),
            Slot::Starting | Slot::Closed => None,
        })
        .ok()?;
        self.started = true;
        Some(Turn { txn, first: !self.batch.written.load(Ordering::Acquire) })
    }

    /// Ends the turn: `ok` when the whole write is in the transaction, otherwise the batch is poisoned.
    pub(crate) fn finish(&mut self, turn: Turn, ok: bool) {
        let flag = if ok { &self.batch.written } else { &self.batch.poisoned };
        flag.store(true, Ordering::Release);
        drop(turn);
        self.done();
    }

    /// Hands the whole write, as `statements` that need nothing read back, to the batch instead of taking a
    /// turn: the coordinator runs them with those of the other members that did the same (see the module
    /// documentation). Answers whether they committed; `false` means nothing of them did.
    pub(crate) async fn submit(mut self, statements: Vec<PlannedStatement>) -> bool {
        // From here the coordinator accounts for this member: it leaves `pending` once its statements ran,
        // and a caller going away now can no longer leave half a write behind.
        self.finished = true;
        // The coordinator keeps the receiver until the batch has ended, which waits for this member.
        if self.batch.submitted.send(statements).is_err() {
            self.batch.pending.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.batch.finished.notify_one();
        self.committed().await
    }

    /// Leaves without writing (after [`Member::turn`] said `None`).
    pub(crate) fn leave(mut self) {
        self.done();
    }

    /// Waits for the batch's end: whether the write committed. `false` means nothing of it did.
    pub(crate) async fn committed(self) -> bool {
        let mut outcome = self.batch.outcome.subscribe();
        // A coordinator that vanished (runtime shutting down) committed nothing it could report.
        matches!(outcome.wait_for(Option::is_some).await.map(|o| *o), Ok(Some(true)))
    }

    fn done(&mut self) {
        if !self.finished {
            self.finished = true;
            self.batch.pending.fetch_sub(1, Ordering::AcqRel);
            self.batch.finished.notify_one();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.started && !self.finished {
            self.batch.poisoned.store(true, Ordering::Release);
        }
        self.done();
    }
}
