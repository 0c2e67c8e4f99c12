//! The partition emulator: throttles the embedded server the way S3 throttles a bucket.
//!
//! S3 serves each key-range partition at about 3,500 writes and 5,500 reads a second,
//! answers `503 SlowDown` beyond that, and splits a partition that stays hot. The emulator
//! models exactly that, at rates scaled down so a laptop can reach them:
//! - The keyspace starts as one partition (or at given boundaries). A partition owns the keys
//!   from its start key (inclusive) to the next partition's start.
//! - Each partition has two token buckets, writes (PUT, COPY, parts, DELETE: one token per
//!   key, also inside DeleteObjects) and reads (GET, HEAD, LIST), refilled at the configured
//!   rates with one second of burst. An empty bucket answers `503 SlowDown`; for
//!   CompleteMultipartUpload it answers `200 OK` with the SlowDown in the body, as S3 does.
//! - Split policy ([`SplitPolicy`]): nobody outside AWS knows whether S3 splits a partition
//!   on sustained demand or on sustained 503s, so both are modelled, and a client should win
//!   under both.
//!   - `Demand`: a partition that has run hot for `split_after` splits. Time is cut in
//!     250 ms windows; a window is hot when the partition was asked for at least 80% of what
//!     it serves in that time (admitted and throttled requests, reads and writes each
//!     against their rate); an episode is a run of hot windows. A client that paces itself
//!     well still asks for all a partition can give, and gets its split.
//!   - `Throttles { seconds, window }`: a partition splits only once it has answered
//!     SlowDown in `seconds` distinct seconds within the last `window`. A client that never
//!     exceeds the rate it is given never gets a split: it has to keep probing above it.
//!
//!   Either way the split is at the median of the last 256 keys the partition admitted, if
//!   that key lies strictly inside it; both halves start with full buckets. Sequential keys
//!   (dates, counters) keep landing above the median, so the hot spot follows them, as on
//!   S3; hashed keys spread, so every split halves the load. At most `max_partitions`.
//! - Counters per partition (requests, throttles by kind) and the split history are readable
//!   as JSON ([`Emulator::snapshot`]).

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When a partition splits (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitPolicy {
    Demand,
    Throttles { seconds: u32, window: Duration },
}

impl std::str::FromStr for SplitPolicy {
    type Err = crate::invalid::Invalid;

    /// `demand`, or `throttles` / `throttles:K/WINDOW_SECS` (default 3 seconds in 10).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "demand" => Ok(SplitPolicy::Demand),
            None if s == "throttles" => Ok(SplitPolicy::Throttles {
                seconds: 3,
                window: Duration::from_secs(10),
            }),
            Some(("throttles", spec)) => {
                let bad = || {
                    crate::invalid::Invalid::new(
                        format!("bad split policy {s:?}"),
                        "throttles:K/WINDOW_SECS, e.g. throttles:3/10",
                    )
                };
                let (k, w) = spec.split_once('/').ok_or_else(bad)?;
                let seconds: u32 = k.parse().map_err(|_| bad())?;
                let window: u64 = w.parse().map_err(|_| bad())?;
                if seconds == 0 || window < seconds as u64 {
                    return Err(bad());
                }
                Ok(SplitPolicy::Throttles {
                    seconds,
                    window: Duration::from_secs(window),
                })
            }
            _ => Err(crate::invalid::Invalid::new(
                format!("unknown split policy {s:?}"),
                "demand or throttles[:K/WINDOW_SECS]",
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub write_rate: f64,
    pub read_rate: f64,
    pub split_policy: SplitPolicy,
    /// Under `Demand`: how long a partition runs hot before it splits.
    pub split_after: Duration,
    pub max_partitions: usize,
    /// Start keys of the initial partitions besides `""`.
    pub boundaries: Vec<String>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            write_rate: 3500.0,
            read_rate: 5500.0,
            split_policy: SplitPolicy::Demand,
            split_after: Duration::from_secs(2),
            max_partitions: 256,
            boundaries: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Self {
        Bucket {
            rate,
            tokens: rate.max(1.0),
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let capacity = self.rate.max(1.0);
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Partition {
    start: String,
    write: Bucket,
    read: Bucket,
    /// Start of the current run of hot windows.
    episode: Option<Instant>,
    window_start: Instant,
    window_reads: f64,
    window_writes: f64,
    recent: VecDeque<String>,
    /// Seconds (since the emulator started) in which it answered SlowDown, newest last.
    throttled_seconds: VecDeque<u64>,
    reads: u64,
    writes: u64,
    read_throttles: u64,
    write_throttles: u64,
}

impl Partition {
    fn new(start: String, cfg: &EmulatorConfig, now: Instant) -> Self {
        Partition {
            start,
            write: Bucket::new(cfg.write_rate, now),
            read: Bucket::new(cfg.read_rate, now),
            episode: None,
            window_start: now,
            window_reads: 0.0,
            window_writes: 0.0,
            recent: VecDeque::with_capacity(256),
            throttled_seconds: VecDeque::new(),
            reads: 0,
            writes: 0,
            read_throttles: 0,
            write_throttles: 0,
        }
    }
}

/// What a partition looks like from outside.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStats {
    pub start: String,
    pub reads: u64,
    pub writes: u64,
    pub read_throttles: u64,
    pub write_throttles: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Split {
    pub at_key: String,
    pub after_ms: u128,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmulatorSnapshot {
    pub partitions: Vec<PartitionStats>,
    pub splits: Vec<Split>,
    pub throttles: u64,
    /// Index of the partition of every admitted write, in order (the last 100,000).
    #[serde(skip)]
    pub write_log: Vec<usize>,
    /// The keys of those writes, in the same order.
    #[serde(skip)]
    pub write_keys: Vec<String>,
}

struct State {
    partitions: Vec<Partition>,
    splits: Vec<Split>,
    write_log: VecDeque<String>,
}

pub struct Emulator {
    cfg: EmulatorConfig,
    started: Instant,
    state: Mutex<State>,
}

const WRITE_LOG: usize = 100_000;
const WINDOW: Duration = Duration::from_millis(250);

impl Emulator {
    pub fn new(cfg: EmulatorConfig) -> Self {
        let now = Instant::now();
        let mut starts = vec![String::new()];
        starts.extend(cfg.boundaries.iter().filter(|b| !b.is_empty()).cloned());
        starts.sort();
        starts.dedup();
        let partitions = starts.into_iter().map(|s| Partition::new(s, &cfg, now)).collect();
        Emulator {
            cfg,
            started: now,
            state: Mutex::new(State {
                partitions,
                splits: Vec::new(),
                write_log: VecDeque::new(),
            }),
        }
    }

    fn index(parts: &[Partition], key: &str) -> usize {
        parts.partition_point(|p| p.start.as_str() <= key).saturating_sub(1)
    }

    /// Admits one access to `key`, or says SlowDown (false).
    pub fn admit(&self, access: Access, key: &str) -> bool {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let i = Self::index(&st.partitions, key);
        let p = &mut st.partitions[i];
        let bucket = match access {
            Access::Read => &mut p.read,
            Access::Write => &mut p.write,
        };
        let ok = bucket.take(now);
        let window = now.duration_since(p.window_start);
        if window >= WINDOW {
            let secs = window.as_secs_f64();
            let hot = p.window_writes >= 0.8 * self.cfg.write_rate * secs
                || p.window_reads >= 0.8 * self.cfg.read_rate * secs;
            p.episode = if hot {
                Some(p.episode.unwrap_or(p.window_start))
            } else {
                None
            };
            p.window_start = now;
            p.window_reads = 0.0;
            p.window_writes = 0.0;
        }
        match access {
            Access::Read => p.window_reads += 1.0,
            Access::Write => p.window_writes += 1.0,
        }
        let hot = p.episode.is_some();
        if ok {
            match access {
                Access::Read => p.reads += 1,
                Access::Write => p.writes += 1,
            }
            if p.recent.len() == 256 {
                p.recent.pop_front();
            }
            p.recent.push_back(key.to_string());
            if access == Access::Write {
                if st.write_log.len() == WRITE_LOG {
                    st.write_log.pop_front();
                }
                st.write_log.push_back(key.to_string());
            }
            if hot {
                self.maybe_split(&mut st, i, now);
            }
            return true;
        }
        match access {
            Access::Read => p.read_throttles += 1,
            Access::Write => p.write_throttles += 1,
        }
        let second = now.duration_since(self.started).as_secs();
        if p.throttled_seconds.back() != Some(&second) {
            p.throttled_seconds.push_back(second);
        }
        self.maybe_split(&mut st, i, now);
        false
    }

    fn maybe_split(&self, st: &mut State, i: usize, now: Instant) {
        let p = &mut st.partitions[i];
        let due = match self.cfg.split_policy {
            SplitPolicy::Demand => p
                .episode
                .is_some_and(|start| now.duration_since(start) >= self.cfg.split_after),
            SplitPolicy::Throttles { seconds, window } => {
                let second = now.duration_since(self.started).as_secs();
                while p
                    .throttled_seconds
                    .front()
                    .is_some_and(|s| second.saturating_sub(*s) >= window.as_secs())
                {
                    p.throttled_seconds.pop_front();
                }
                p.throttled_seconds.len() >= seconds as usize
            }
        };
        if due && st.partitions.len() < self.cfg.max_partitions {
            self.split(st, i, now);
        }
    }

    fn split(&self, st: &mut State, i: usize, now: Instant) {
        let p = &mut st.partitions[i];
        let mut keys: Vec<&String> = p.recent.iter().collect();
        keys.sort();
        let Some(median) = keys.get(keys.len() / 2).map(|k| (*k).clone()) else {
            return;
        };
        let end_ok = st.partitions.get(i + 1).is_none_or(|next| median < next.start);
        let p = &mut st.partitions[i];
        if median <= p.start || !end_ok {
            return;
        }
        p.episode = None;
        p.throttled_seconds.clear();
        p.write = Bucket::new(self.cfg.write_rate, now);
        p.read = Bucket::new(self.cfg.read_rate, now);
        p.recent.retain(|k| *k < median);
        let mut upper = Partition::new(median.clone(), &self.cfg, now);
        upper.recent = st.partitions[i]
            .recent
            .iter()
            .filter(|k| **k >= median)
            .cloned()
            .collect();
        st.partitions.insert(i + 1, upper);
        tracing::info!(at = %median, partitions = st.partitions.len(), "emulated partition split");
        st.splits.push(Split {
            at_key: median,
            after_ms: now.duration_since(self.started).as_millis(),
        });
    }

    pub fn snapshot(&self) -> EmulatorSnapshot {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let partitions: Vec<PartitionStats> = st
            .partitions
            .iter()
            .map(|p| PartitionStats {
                start: p.start.clone(),
                reads: p.reads,
                writes: p.writes,
                read_throttles: p.read_throttles,
                write_throttles: p.write_throttles,
            })
            .collect();
        let throttles = partitions.iter().map(|p| p.read_throttles + p.write_throttles).sum();
        let write_log = st.write_log.iter().map(|k| Self::index(&st.partitions, k)).collect();
        let write_keys = st.write_log.iter().cloned().collect();
        EmulatorSnapshot {
            partitions,
            splits: st.splits.clone(),
            throttles,
            write_log,
            write_keys,
        }
    }

    pub fn snapshot_json(&self) -> String {
        serde_json::to_string_pretty(&self.snapshot()).unwrap_or_else(|_| "{}".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emu(rate: f64, split_ms: u64) -> Emulator {
        Emulator::new(EmulatorConfig {
            write_rate: rate,
            read_rate: rate,
            split_after: Duration::from_millis(split_ms),
            max_partitions: 64,
            ..EmulatorConfig::default()
        })
    }

    #[test]
    fn under_the_throttle_policy_only_slowdowns_in_distinct_seconds_split() {
        let e = Emulator::new(EmulatorConfig {
            write_rate: 20.0,
            read_rate: 20.0,
            split_policy: "throttles:2/10".parse().unwrap(),
            max_partitions: 64,
            ..EmulatorConfig::default()
        });
        let key = |i: u64| format!("{:x}/file", (i * 2654435761) % 4096);
        // Demand right at the rate, never beyond: hot, but never throttled, never split.
        let start = Instant::now();
        let mut i = 0;
        while start.elapsed() < Duration::from_millis(1500) {
            assert!(e.admit(Access::Write, &key(i)));
            i += 1;
            std::thread::sleep(Duration::from_millis(60));
        }
        assert_eq!(e.snapshot().partitions.len(), 1);
        // Many SlowDowns, all in one second: still no split.
        while e.admit(Access::Write, &key(i)) {
            i += 1;
        }
        for _ in 0..100 {
            e.admit(Access::Write, &key(i));
            i += 1;
        }
        assert_eq!(e.snapshot().partitions.len(), 1, "one second of throttles");
        // SlowDown again in a later second: the second distinct second splits it.
        std::thread::sleep(Duration::from_millis(1100));
        while e.admit(Access::Write, &key(i)) {
            i += 1;
        }
        assert_eq!(e.snapshot().partitions.len(), 2);
    }

    #[test]
    fn split_policies_parse() {
        assert_eq!("demand".parse::<SplitPolicy>().unwrap(), SplitPolicy::Demand);
        assert_eq!(
            "throttles:3/10".parse::<SplitPolicy>().unwrap(),
            SplitPolicy::Throttles {
                seconds: 3,
                window: Duration::from_secs(10)
            }
        );
        assert!("throttles:0/10".parse::<SplitPolicy>().is_err());
        assert!("sometimes".parse::<SplitPolicy>().is_err());
    }

    #[test]
    fn an_empty_bucket_throttles_and_refills() {
        let e = emu(10.0, 60_000);
        let admitted = (0..50).filter(|i| e.admit(Access::Write, &format!("k{i}"))).count();
        assert_eq!(admitted, 10, "one second of burst");
        std::thread::sleep(Duration::from_millis(250));
        assert!(e.admit(Access::Write, "k"), "refilled at the rate");
        assert!(e.admit(Access::Read, "k"), "reads have their own bucket");
        assert_eq!(e.snapshot().throttles, 40);
    }

    #[test]
    fn sustained_throttling_splits_at_the_median_of_recent_keys() {
        let e = emu(20.0, 50);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut i = 0u64;
        while e.snapshot().partitions.len() < 2 && Instant::now() < deadline {
            // Hashed-looking keys: spread over the keyspace.
            e.admit(Access::Write, &format!("{:x}/file", (i * 2654435761) % 4096));
            i += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        let snap = e.snapshot();
        assert_eq!(snap.partitions.len(), 2);
        assert_eq!(snap.splits.len(), 1);
        assert_eq!(snap.partitions[1].start, snap.splits[0].at_key);
    }

    #[test]
    fn keys_route_to_their_partition() {
        let e = Emulator::new(EmulatorConfig {
            boundaries: vec!["m".into()],
            ..EmulatorConfig::default()
        });
        assert!(e.admit(Access::Write, "a"));
        assert!(e.admit(Access::Write, "z"));
        let snap = e.snapshot();
        assert_eq!(snap.write_log, vec![0, 1]);
    }
}
