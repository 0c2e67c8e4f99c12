//! Settled directories (`--settled-after`, issue 26) on a real mount: a remount's `find` and
//! `du` over a year of dated directories another client wrote are answered from the cache
//! directory with no request; a change of the mount unsettles its directories, even when
//! the daemon is killed before it writes its listings again; another client's change in a
//! settled directory shows once `--settled-ttl` has passed (the window the README states).

mod common;

use common::*;
use prefixfs::layout::RelPath;
use std::collections::BTreeMap;

fn key(env: &Env, path: &str) -> String {
    env.layout(16).file_key(&RelPath::parse(path).unwrap()).unwrap()
}

/// `months` × `days` dated directories of `per_day` files each, written through the S3 API.
fn year(env: &Env, months: u32, days: u32, per_day: u32) {
    for m in 1..=months {
        for d in 1..=days {
            for n in 0..per_day {
                let path = format!("2025/{m:02}/{d:02}/f-{n}.txt");
                env.put(&key(env, &path), format!("{path}\n").as_bytes());
            }
        }
    }
}

/// Every request sent, by kind.
fn requests(s: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    s.iter()
        .filter(|(k, _)| k.starts_with("requests_"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// What was sent between two snapshots of the counters.
fn sent(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    requests(after)
        .into_iter()
        .map(|(k, v)| {
            let was = before.get(&k).copied().unwrap_or(0);
            (k, v - was)
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

const SETTLED: [&str; 4] = ["--settled-after", "0", "--settled-ttl", "3600"];
/// Every name, size, mode, owner and mtime of the year (a directory's own time is the
/// mount's when it has no object of its own, so only files' are compared).
const WALK: &str = "find 2025 | wc -l; du -s --apparent-size -B1 2025 | cut -f1; \
    find 2025 -printf '%p %s %m %u\\n' | sort | md5sum; find 2025 -type f -printf '%p %T@\\n' | sort | md5sum";

#[test]
fn a_remount_walks_settled_directories_with_no_request() {
    let env = Env::embedded();
    year(&env, 12, 3, 2);
    let mut m = env.mount(16, &SETTLED);
    let start = m.stats();
    let cold = m.ok(WALK);
    let cold_sent = sent(&start, &m.stats());
    // 72 files, 36 days, 12 months and the year.
    assert!(cold.starts_with("121\n"), "{cold}");
    assert!(cold_sent.get("requests_list").is_some_and(|&n| n > 0), "{cold_sent:?}");
    // Every directory of the year settled; the walk knew their ages whole.
    assert!(m.stats()["settled_dirs"] >= 49, "{:?}", m.stats());
    m.unmount();

    let mut m = env.mount(16, &SETTLED);
    let start = m.stats();
    assert!(start["settled_dirs"] >= 49, "kept across the remount: {start:?}");
    assert_eq!(m.ok(WALK), cold, "the same tree, sizes and attributes");
    let warm_sent = sent(&start, &m.stats());
    assert!(
        warm_sent.is_empty(),
        "a settled walk sends nothing: {warm_sent:?} (cold: {cold_sent:?})"
    );
}

#[test]
fn a_change_of_the_mount_unsettles_its_directories_even_across_a_kill() {
    let env = Env::embedded();
    year(&env, 3, 2, 2);
    {
        let mut m = env.mount(16, &SETTLED);
        m.ok(WALK);
        m.unmount();
    }
    let mut m = env.mount(16, &SETTLED);
    m.ok("echo new > 2025/02/01/new.txt; mkdir 2025/03/09; rm 2025/01/02/f-0.txt");
    // Killed before it writes its settled listings again: the change log alone says what
    // changed.
    let mut daemon = m.child.take().unwrap();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    m.unmount();

    let mut m = env.mount(16, &SETTLED);
    let start = m.stats();
    // Of the 11 settled (6 days, 3 months, the year, the root), the changed days and every
    // directory above them are dropped: 2025/01/01, 2025/02/02, 2025/03/01 and 02 are left.
    assert_eq!(start["settled_dirs"], 4, "{start:?}");
    assert_eq!(m.ok("ls 2025/02/01"), "f-0.txt\nf-1.txt\nnew.txt\n");
    assert_eq!(m.ok("ls 2025/01/02"), "f-1.txt\n");
    assert_eq!(m.ok("ls 2025/03"), "01\n02\n09\n");
    assert_eq!(m.ok("cat 2025/02/01/new.txt"), "new\n");
}

#[test]
fn another_clients_change_in_a_settled_directory_shows_after_the_settled_ttl() {
    let env = Env::embedded();
    year(&env, 1, 2, 1);
    {
        let mut m = env.mount(16, &SETTLED);
        assert_eq!(m.ok("ls 2025/01/01"), "f-0.txt\n");
        m.unmount();
    }
    env.put(&key(&env, "2025/01/01/late.txt"), b"late\n");
    {
        // Within --settled-ttl: the kept listing is trusted (the stated window).
        let mut m = env.mount(16, &SETTLED);
        assert_eq!(m.ok("ls 2025/01/01"), "f-0.txt\n");
        m.unmount();
    }
    // Past it: listed again, the new file shown, the kept attributes carried over.
    let mut m = env.mount(16, &["--settled-after", "0", "--settled-ttl", "0"]);
    assert_eq!(m.ok("ls 2025/01/01"), "f-0.txt\nlate.txt\n");
    // Without --settled-after nothing is kept or trusted: a plain mount lists.
    let mut plain = env.mount(16, &[]);
    assert_eq!(plain.ok("ls 2025/01/01"), "f-0.txt\nlate.txt\n");
    assert!(!plain.stats().contains_key("settled_dirs"));
}
