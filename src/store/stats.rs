//! Request counters: every attempt sent to S3, by kind, plus throttles and retries.
//!
//! Tests and benchmarks read these to assert what an operation costs ("a second `ls` within
//! the TTL sends no LIST").

use super::OpKind;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

tokio::task_local! {
    /// The FUSE operation (or other caller) a request is sent for, so that the counters say
    /// what an `ls -l` cost. Requests sent outside any scope count as "background".
    pub static CALLER: &'static str;
}

/// The caller label of requests sent outside a [`CALLER`] scope.
pub const BACKGROUND: &str = "background";

/// Requests caused by one kind of caller: how often it was called, and the S3 requests it
/// sent by kind (retries included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerCounters {
    pub calls: u64,
    pub requests: BTreeMap<&'static str, u64>,
}

/// Counters of one hash prefix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrefixCounters {
    pub requests: BTreeMap<&'static str, u64>,
    pub throttles: u64,
    pub retries: u64,
    pub latency_sum: Duration,
    pub latency_count: u64,
    /// The pacer's current limit in requests per second (None: unpaced).
    pub rate_limit: Option<f64>,
}

#[derive(Default)]
pub struct RequestStats {
    requests: [AtomicU64; OpKind::ALL.len()],
    throttles: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
    /// The store has answered at least once (anything, an error included).
    answered: std::sync::atomic::AtomicBool,
    per_prefix: Mutex<BTreeMap<String, PrefixCounters>>,
    per_caller: Mutex<BTreeMap<&'static str, CallerCounters>>,
}

impl std::fmt::Debug for RequestStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStats")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub requests: Vec<(&'static str, u64)>,
    pub throttles: u64,
    pub retries: u64,
    pub failures: u64,
}

impl StatsSnapshot {
    pub fn get(&self, kind: OpKind) -> u64 {
        self.requests
            .iter()
            .find(|(n, _)| *n == kind.name())
            .map(|(_, v)| *v)
            .unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.requests.iter().map(|(_, v)| v).sum()
    }

    /// Counters as `name value` lines (the `user.prefixfs.stats` attribute).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (name, v) in &self.requests {
            out.push_str(&format!("requests_{name} {v}\n"));
        }
        out.push_str(&format!(
            "throttles {}\nretries {}\nfailures {}\n",
            self.throttles, self.retries, self.failures
        ));
        out
    }
}

impl RequestStats {
    fn with_prefix(&self, prefix: &str, f: impl FnOnce(&mut PrefixCounters)) {
        let mut m = self.per_prefix.lock().unwrap_or_else(|e| e.into_inner());
        f(m.entry(prefix.to_string()).or_default());
    }

    /// One attempt against `prefix`: its kind, latency, and whether it was throttled.
    pub fn record_prefix(&self, prefix: &str, kind: OpKind, latency: Duration, throttled: bool) {
        self.with_prefix(prefix, |c| {
            *c.requests.entry(kind.name()).or_default() += 1;
            c.latency_sum += latency;
            c.latency_count += 1;
            if throttled {
                c.throttles += 1;
            }
        });
    }

    /// A throttle reported inside a response (a key of DeleteObjects).
    pub fn record_prefix_throttle(&self, prefix: &str) {
        self.throttles.fetch_add(1, Ordering::Relaxed);
        self.with_prefix(prefix, |c| c.throttles += 1);
    }

    pub fn record_prefix_retry(&self, prefix: &str) {
        self.with_prefix(prefix, |c| c.retries += 1);
    }

    pub fn set_prefix_rate(&self, prefix: &str, rate: Option<f64>) {
        self.with_prefix(prefix, |c| c.rate_limit = rate);
    }

    pub fn prefix_snapshot(&self) -> BTreeMap<String, PrefixCounters> {
        self.per_prefix.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counters in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        let s = self.snapshot();
        let mut out = String::from("# TYPE prefixfs_requests_total counter\n");
        for (kind, v) in &s.requests {
            out.push_str(&format!("prefixfs_requests_total{{kind=\"{kind}\"}} {v}\n"));
        }
        out.push_str(&format!(
            "# TYPE prefixfs_throttles_total counter\nprefixfs_throttles_total {}\n\
             # TYPE prefixfs_retries_total counter\nprefixfs_retries_total {}\n\
             # TYPE prefixfs_failures_total counter\nprefixfs_failures_total {}\n",
            s.throttles, s.retries, s.failures
        ));
        let per = self.prefix_snapshot();
        out.push_str("# TYPE prefixfs_prefix_requests_total counter\n");
        for (p, c) in &per {
            for (kind, v) in &c.requests {
                out.push_str(&format!(
                    "prefixfs_prefix_requests_total{{prefix=\"{p}\",kind=\"{kind}\"}} {v}\n"
                ));
            }
        }
        out.push_str("# TYPE prefixfs_prefix_throttles_total counter\n");
        for (p, c) in &per {
            out.push_str(&format!(
                "prefixfs_prefix_throttles_total{{prefix=\"{p}\"}} {}\n",
                c.throttles
            ));
        }
        out.push_str("# TYPE prefixfs_prefix_retries_total counter\n");
        for (p, c) in &per {
            out.push_str(&format!(
                "prefixfs_prefix_retries_total{{prefix=\"{p}\"}} {}\n",
                c.retries
            ));
        }
        out.push_str("# TYPE prefixfs_prefix_latency_seconds summary\n");
        for (p, c) in &per {
            out.push_str(&format!(
                "prefixfs_prefix_latency_seconds_sum{{prefix=\"{p}\"}} {:.6}\nprefixfs_prefix_latency_seconds_count{{prefix=\"{p}\"}} {}\n",
                c.latency_sum.as_secs_f64(),
                c.latency_count
            ));
        }
        out.push_str("# TYPE prefixfs_prefix_rate_limit gauge\n");
        for (p, c) in &per {
            if let Some(r) = c.rate_limit {
                out.push_str(&format!("prefixfs_prefix_rate_limit{{prefix=\"{p}\"}} {r:.1}\n"));
            }
        }
        out
    }

    pub fn record_request(&self, kind: OpKind) {
        self.requests[kind.index()].fetch_add(1, Ordering::Relaxed);
        let caller = CALLER.try_with(|c| *c).unwrap_or(BACKGROUND);
        let mut m = self.per_caller.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(caller).or_default().requests.entry(kind.name()).or_default() += 1;
    }

    /// One call of a FUSE operation (or another caller), whether it sent requests or not.
    pub fn record_call(&self, caller: &'static str) {
        let mut m = self.per_caller.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(caller).or_default().calls += 1;
    }

    pub fn caller_snapshot(&self) -> BTreeMap<&'static str, CallerCounters> {
        self.per_caller.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Per-caller counters as `op NAME calls=N kind=N...` lines.
    pub fn caller_text(&self) -> String {
        let mut out = String::new();
        for (caller, c) in self.caller_snapshot() {
            out.push_str(&format!("op {caller}: calls={}", c.calls));
            for (kind, n) in &c.requests {
                out.push_str(&format!(" {kind}={n}"));
            }
            out.push('\n');
        }
        out
    }

    pub fn record_throttle(&self) {
        self.throttles.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The store answered a request (a success or an error it sent).
    pub fn record_answer(&self) {
        // Read first: every request passes here, and a store would bounce the cache line
        // between the threads sending them.
        if !self.answered.load(Ordering::Relaxed) {
            self.answered.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the store has ever answered: before that, an endpoint that cannot be reached
    /// is a set-up error to report at once, not an outage to wait out.
    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: OpKind::ALL
                .iter()
                .map(|k| (k.name(), self.requests[k.index()].load(Ordering::Relaxed)))
                .collect(),
            throttles: self.throttles.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}
