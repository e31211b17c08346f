//! The load loop: closed-loop (a fixed number of callers, each sending its next request when the last
//! answered) or open-loop (requests start at a fixed rate whether or not earlier ones answered), a
//! warm-up that is not recorded, then a measured window.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::process::ProcStats;

/// What one request came to.
#[derive(Debug)]
pub enum Step {
    /// Answered successfully.
    Ok,
    /// Failed; the string is the error bucket (e.g. `RESOURCE_EXHAUSTED`).
    Failed(String),
    /// Nothing left to do (e.g. no session left to delete): the run ends here.
    Exhausted,
}

/// How a run is driven.
#[derive(Debug, Clone)]
pub struct Drive {
    /// Time before recording starts.
    pub warmup: Duration,
    /// Length of the recorded window.
    pub duration: Duration,
    /// Callers (closed loop) or the cap on outstanding requests (open loop).
    pub in_flight: usize,
    /// Requests per second (open loop); `None` for closed loop.
    pub rate: Option<f64>,
    /// Process whose CPU and memory are sampled at the window's start and end.
    pub pid: Option<u32>,
}

/// Per error bucket: how many, and how many of them were answered within a second.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ErrorCount {
    /// Failures in the window.
    pub count: u64,
    /// Of those, answered within one second.
    pub within_1s: u64,
}

/// The figures of one run.
#[derive(Debug)]
pub struct Measured {
    /// Latency of successful requests, in microseconds.
    pub latency: Histogram<u64>,
    /// Successful requests in the window.
    pub ok: u64,
    /// Failures in the window by bucket.
    pub errors: BTreeMap<String, ErrorCount>,
    /// Actual length of the window (shorter when the run was exhausted early).
    pub window: Duration,
    /// Requests the open loop started in the window (closed loop: ok + failures).
    pub offered: u64,
    /// Process figures at the start and end of the window.
    pub proc_start: Option<ProcStats>,
    /// See `proc_start`.
    pub proc_end: Option<ProcStats>,
    /// True when [`Step::Exhausted`] ended the run early.
    pub exhausted: bool,
}

impl Measured {
    /// Successful requests per second over the window.
    pub fn rps(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 { self.ok as f64 / secs } else { 0.0 }
    }

    /// A latency quantile in milliseconds (0 when nothing succeeded).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() { 0.0 } else { self.latency.value_at_quantile(q) as f64 / 1000.0 }
    }
}

struct Shared {
    latency: Histogram<u64>,
    ok: u64,
    offered: u64,
    errors: BTreeMap<String, ErrorCount>,
}

struct Window {
    start: Instant,
    end: Instant,
    stop: AtomicBool,
    stopped_at: Mutex<Option<Instant>>,
    shared: Mutex<Shared>,
}

impl Window {
    fn in_window(&self, started: Instant, finished: Instant) -> bool {
        let end = (*self.stopped_at.lock()).unwrap_or(self.end).min(self.end);
        started >= self.start && finished <= end
    }

    fn record(&self, started: Instant, finished: Instant, step: Step) {
        match step {
            Step::Exhausted => self.exhaust(finished),
            Step::Ok if self.in_window(started, finished) => {
                let micros = u64::try_from(finished.duration_since(started).as_micros()).unwrap_or(u64::MAX);
                let mut shared = self.shared.lock();
                shared.ok += 1;
                shared.latency.saturating_record(micros.max(1));
            }
            Step::Failed(kind) if self.in_window(started, finished) => {
                let mut shared = self.shared.lock();
                let entry = shared.errors.entry(kind).or_default();
                entry.count += 1;
                if finished.duration_since(started) <= Duration::from_secs(1) {
                    entry.within_1s += 1;
                }
            }
            Step::Ok | Step::Failed(_) => {}
        }
    }

    fn exhaust(&self, at: Instant) {
        self.stop.store(true, Ordering::Relaxed);
        let mut stopped = self.stopped_at.lock();
        if stopped.is_none_or(|t| at < t) {
            *stopped = Some(at);
        }
    }

    fn done(&self, now: Instant) -> bool {
        now >= self.end || self.stop.load(Ordering::Relaxed)
    }
}

/// Runs `op(slot, seq)` as configured and measures it. `slot` (below `in_flight`) is owned by one
/// request at a time, so a scenario can keep per-slot state (e.g. the session a caller updates).
pub async fn run<F, Fut>(drive: &Drive, op: F) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Step> + Send + 'static,
{
    let op = Arc::new(op);
    let in_flight = drive.in_flight.max(1);
    let begin = Instant::now();
    let start = begin + drive.warmup;
    let window = Arc::new(Window {
        start,
        end: start + drive.duration,
        stop: AtomicBool::new(false),
        stopped_at: Mutex::new(None),
        shared: Mutex::new(Shared { latency: new_histogram(), ok: 0, offered: 0, errors: BTreeMap::new() }),
    });
    let sampler = drive.pid.map(|pid| {
        let window = Arc::clone(&window);
        tokio::spawn(async move {
            tokio::time::sleep_until(window.start).await;
            let first = ProcStats::of(pid);
            // Wakes at the end of the window or as soon as the run is exhausted.
            while !window.done(Instant::now()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (first, ProcStats::of(pid))
        })
    });

    let mut tasks = JoinSet::new();
    match drive.rate {
        None => {
            for slot in 0..in_flight {
                let op = Arc::clone(&op);
                let window = Arc::clone(&window);
                tasks.spawn(async move {
                    let mut seq = slot as u64;
                    loop {
                        let started = Instant::now();
                        if window.done(started) {
                            break;
                        }
                        let step = op(slot, seq).await;
                        if started >= window.start {
                            window.shared.lock().offered += 1;
                        }
                        window.record(started, Instant::now(), step);
                        seq += in_flight as u64;
                    }
                });
            }
        }
        Some(rate) => {
            let rate = rate.max(0.001);
            let (free_tx, mut free_rx) = tokio::sync::mpsc::channel::<usize>(in_flight);
            for slot in 0..in_flight {
                let _ = free_tx.try_send(slot);
            }
            let mut seq: u64 = 0;
            loop {
                // The schedule is fixed in advance; latency counts from the planned start, so a stalled
                // server (or a full slot pool) shows up as latency instead of silently lowering the load.
                let planned = begin + Duration::from_secs_f64(seq as f64 / rate);
                if window.done(planned) || window.done(Instant::now()) {
                    break;
                }
                tokio::time::sleep_until(planned).await;
                let Some(slot) = free_rx.recv().await else { break };
                if planned >= window.start {
                    window.shared.lock().offered += 1;
                }
                let op = Arc::clone(&op);
                let window = Arc::clone(&window);
                let free_tx = free_tx.clone();
                let n = seq;
                tasks.spawn(async move {
                    let step = op(slot, n).await;
                    window.record(planned, Instant::now(), step);
                    let _ = free_tx.send(slot).await;
                });
                seq += 1;
                // Reap finished tasks so a long run does not keep their results around.
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    // Requests still running at the end are given a grace period, then dropped: they started in the
    // window and are not counted unless they finish inside it anyway. The period counts from the window's
    // end: the closed loop gets here right after starting its callers, and a timer started now would
    // abort them five seconds into any longer run.
    let grace = tokio::time::sleep_until(window.end + Duration::from_secs(5));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            () = &mut grace => { tasks.abort_all(); break }
        }
    }
    let (proc_start, proc_end) = match sampler {
        Some(handle) => handle.await.unwrap_or((None, None)),
        None => (None, None),
    };
    let stopped_at = *window.stopped_at.lock();
    let exhausted = stopped_at.is_some();
    let end = stopped_at.unwrap_or(window.end).min(window.end);
    let shared = std::mem::replace(
        &mut *window.shared.lock(),
        Shared { latency: new_histogram(), ok: 0, offered: 0, errors: BTreeMap::new() },
    );
    Measured {
        latency: shared.latency,
        ok: shared.ok,
        errors: shared.errors,
        window: end.saturating_duration_since(window.start),
        offered: shared.offered,
        proc_start,
        proc_end,
        exhausted,
    }
}

/// Latencies from 1 µs to 2 minutes at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("constant histogram bounds are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Virtual time: the callers sleep 10 ms per request, so the counts are exact and the test is instant.
    #[tokio::test(start_paused = true)]
    async fn closed_loop_callers_run_for_the_whole_window() {
        let drive = Drive {
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(8),
            in_flight: 4,
            rate: None,
            pid: None,
        };
        let measured = run(&drive, |_, _| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Step::Ok
        })
        .await;
        assert_eq!(measured.window, Duration::from_secs(8));
        // 4 callers × 100 requests per second × 8 s, give or take the requests at the window's edges.
        assert!((3190..=3200).contains(&measured.ok), "{} requests in the window", measured.ok);
        assert!(!measured.exhausted);
    }
}
