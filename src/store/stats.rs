//! Request counters: every attempt sent to S3, by kind, plus throttles and retries.
//!
//! Tests and benchmarks read these to assert what an operation costs ("a second `ls` within
//! the TTL sends no LIST").

use super::OpKind;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct RequestStats {
    requests: [AtomicU64; OpKind::ALL.len()],
    throttles: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
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

    /// Counters as `name value` lines, the format of the `.prefixfs-stats` control file.
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
    pub fn record_request(&self, kind: OpKind) {
        self.requests[kind.index()].fetch_add(1, Ordering::Relaxed);
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
