//! The data cache on disk (`--data-cache`, issue 26), on a real mount: a remount reads what
//! was read before with no GET; a replaced object is read anew, never mixed with the old
//! one; a damaged block is discarded; the cache keeps its size; two mounts share one
//! directory. The bucket is read through the S3 API to write the objects another client
//! would.

mod common;

use common::*;
use prefixfs::layout::RelPath;
use std::path::Path;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

fn key(env: &Env, path: &str) -> String {
    env.layout(16).file_key(&RelPath::parse(path).unwrap()).unwrap()
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn sha256(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{}  -\n", hex::encode(Sha256::digest(data)))
}

/// The block files in the cache directory, with their sizes.
fn blocks(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir).unwrap().flatten() {
        if shard.file_name().len() != 2 {
            continue;
        }
        for b in std::fs::read_dir(shard.path()).unwrap().flatten() {
            out.push((b.path(), b.metadata().unwrap().len()));
        }
    }
    out
}

/// Mounts with the data cache in `cache_dir`, reads `file` whole and checks it is `data`, read
/// with no GET (the mount's own start, which reads the layout descriptor, is not counted);
/// returns the mount and its counters after the read.
fn read_without_get(
    env: &Env,
    cache_dir: &str,
    file: &str,
    data: &[u8],
) -> (Mount, std::collections::BTreeMap<String, u64>) {
    let mut m = env.mount(16, &["--data-cache", cache_dir]);
    let gets = m.stats()["requests_get"];
    assert_eq!(m.ok(&format!("sha256sum < {file}")), sha256(data));
    let s = m.stats();
    assert_eq!(s["requests_get"], gets, "{s:?}");
    (m, s)
}

#[test]
fn a_remount_reads_a_cached_file_with_no_get() {
    let env = Env::embedded();
    let cache = env.subdir("blocks");
    let c = cache.to_str().unwrap();
    let data = body(3 * MIB + 4321, 7);
    env.put(&key(&env, "2017/02/08/big.bin"), &data);
    {
        let mut m = env.mount(16, &["--data-cache", c]);
        assert_eq!(m.ok("sha256sum < 2017/02/08/big.bin"), sha256(&data));
        let s = m.stats();
        assert!(s["requests_get"] >= 1, "{s:?}");
        m.unmount();
    }
    assert_eq!(blocks(&cache).len(), 4, "three whole blocks and the last one");
    let mut m = env.mount(16, &["--data-cache", c]);
    // The mount's start reads the layout descriptor: counted from here.
    let gets = m.stats()["requests_get"];
    assert_eq!(m.ok("sha256sum < 2017/02/08/big.bin"), sha256(&data));
    assert_eq!(m.ok("head -c 100 2017/02/08/big.bin | wc -c"), "100\n");
    let s = m.stats();
    assert_eq!(s["requests_get"], gets, "{s:?}");
    assert!(s["data_cache_hits"] >= 4, "{s:?}");
    // Private to this user.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
    for (b, _) in blocks(&cache) {
        assert_eq!(std::fs::metadata(&b).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn a_replaced_object_is_read_anew_never_mixed_with_its_cached_blocks() {
    let env = Env::embedded();
    let cache = env.subdir("blocks");
    let c = cache.to_str().unwrap();
    let old = body(2 * MIB + 10, 1);
    let new = body(2 * MIB + 10, 2);
    env.put(&key(&env, "a.bin"), &old);
    let mut m = env.mount(16, &["--data-cache", c, "--metadata-ttl", "1"]);
    assert_eq!(m.ok("sha256sum < a.bin"), sha256(&old));
    env.put(&key(&env, "a.bin"), &new);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(m.ok("sha256sum < a.bin"), sha256(&new));
    let s = m.stats();
    assert!(s["requests_get"] >= 2, "the new version was fetched: {s:?}");
    // And after a remount, still the new version (its blocks, not the old ones).
    m.unmount();
    read_without_get(&env, c, "a.bin", &new);
}

#[test]
fn a_damaged_block_is_discarded_and_fetched_again() {
    let env = Env::embedded();
    let cache = env.subdir("blocks");
    let c = cache.to_str().unwrap();
    let data = body(2 * MIB, 3);
    env.put(&key(&env, "b.bin"), &data);
    {
        let mut m = env.mount(16, &["--data-cache", c]);
        assert_eq!(m.ok("sha256sum < b.bin"), sha256(&data));
        m.unmount();
    }
    // What a crash can leave: a block cut short, another with a flipped byte, and a block
    // being written in tmp/.
    let found = blocks(&cache);
    assert_eq!(found.len(), 2);
    let f = std::fs::OpenOptions::new().write(true).open(&found[0].0).unwrap();
    f.set_len(found[0].1 / 2).unwrap();
    let mut bytes = std::fs::read(&found[1].0).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&found[1].0, bytes).unwrap();
    std::fs::write(cache.join("tmp").join("half-written"), b"PFXBLK01 partial").unwrap();
    let mut m = env.mount(16, &["--data-cache", c]);
    let gets = m.stats()["requests_get"];
    assert_eq!(m.ok("sha256sum < b.bin"), sha256(&data));
    let s = m.stats();
    assert_eq!(s["data_cache_discarded"], 2, "{s:?}");
    assert!(s["requests_get"] > gets, "{s:?}");
    assert!(!cache.join("tmp").join("half-written").exists());
    // Written anew, whole.
    m.unmount();
    read_without_get(&env, c, "b.bin", &data);
}

#[test]
fn the_cache_keeps_within_its_size() {
    let env = Env::embedded();
    let cache = env.subdir("blocks");
    let c = cache.to_str().unwrap();
    let files: Vec<Vec<u8>> = (0..4).map(|i| body(3 * MIB, i)).collect();
    for (i, f) in files.iter().enumerate() {
        env.put(&key(&env, &format!("f{i}.bin")), f);
    }
    let mut m = env.mount(16, &["--data-cache", c, "--data-cache-size-mib", "5"]);
    for (i, f) in files.iter().enumerate() {
        assert_eq!(m.ok(&format!("sha256sum < f{i}.bin")), sha256(f));
        let total: u64 = blocks(&cache).iter().map(|b| b.1).sum();
        assert!(total <= 5 * MIB as u64, "{total} bytes after f{i}");
    }
    let s = m.stats();
    assert!(s["data_cache_evicted"] >= 7, "{s:?}");
    assert!(s["data_cache_bytes"] <= 5 * MIB as u64, "{s:?}");
    // The most recent file is still there whole: read again with no GET.
    let gets = s["requests_get"];
    assert_eq!(m.ok("sha256sum < f3.bin"), sha256(&files[3]));
    assert_eq!(m.stats()["requests_get"], gets);
}

#[test]
fn two_mounts_share_one_cache_directory() {
    let env = Env::embedded();
    let cache = env.subdir("blocks");
    let c = cache.to_str().unwrap();
    let data: Vec<Vec<u8>> = (0..6).map(|i| body(2 * MIB + 77, 10 + i)).collect();
    for (i, d) in data.iter().enumerate() {
        env.put(&key(&env, &format!("s/{i}.bin")), d);
    }
    let mut a = env.mount_host("cache-a", 16, &["--data-cache", c]);
    let mut b = env.mount_host("cache-b", 16, &["--data-cache", c]);
    // Both read every file at once, in opposite orders.
    let script = |order: &str| format!("for i in {order}; do sha256sum < s/$i.bin; done");
    let (pa, pb) = (a.p(""), b.p(""));
    let ta = std::thread::spawn(move || run_sh(&pa, &script("0 1 2 3 4 5")));
    let tb = std::thread::spawn(move || run_sh(&pb, &script("5 4 3 2 1 0")));
    let (oa, ob) = (ta.join().unwrap(), tb.join().unwrap());
    let want: String = data.iter().map(|d| sha256(d)).collect();
    let want_rev: String = data.iter().rev().map(|d| sha256(d)).collect();
    assert_eq!(oa.stdout, want, "{oa:?}");
    assert_eq!(ob.stdout, want_rev, "{ob:?}");
    a.assert_alive();
    b.assert_alive();
    // What either fetched, both find: another read by either costs no GET.
    let before = (a.stats()["requests_get"], b.stats()["requests_get"]);
    assert_eq!(a.ok(&script("0 1 2 3 4 5")), want);
    assert_eq!(b.ok(&script("0 1 2 3 4 5")), want);
    assert_eq!((a.stats()["requests_get"], b.stats()["requests_get"]), before);
}

#[test]
fn a_file_written_through_the_mount_is_read_back_from_the_cache() {
    let env = Env::embedded();
    let cache = env.subdir("blocks");
    let c = cache.to_str().unwrap();
    {
        let mut m = env.mount(16, &["--data-cache", c]);
        m.ok("mkdir -p logs && seq 1 300000 > logs/app.log");
        m.unmount();
    }
    let data = env.get(&key(&env, "logs/app.log"));
    assert!(data.len() > MIB, "two blocks at least");
    let (_m, s) = read_without_get(&env, c, "logs/app.log", &data);
    assert!(s["data_cache_hits"] >= 2, "{s:?}");
}

#[test]
fn a_file_written_in_a_multipart_upload_is_read_back_from_the_cache() {
    let env = Env::embedded();
    let cache = env.subdir("blocks");
    let c = cache.to_str().unwrap();
    {
        let mut m = env.mount(16, &["--data-cache", c, "--part-size-mib", "5"]);
        m.ok("head -c 17000000 /dev/urandom > big.bin");
        // Taken from the upload's local copy after the close returned.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while m.stats()["data_cache_bytes"] < 17_000_000 {
            assert!(std::time::Instant::now() < deadline, "{:?}", m.stats());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(m.stats()["requests_complete_multipart"] >= 1, "a multipart upload");
        // The upload's local copy goes once the cache took it.
        let staged = || -> Vec<std::path::PathBuf> {
            let staging = env.subdir("cache").join("staging");
            std::fs::read_dir(&staging)
                .into_iter()
                .flatten()
                .flatten()
                .flat_map(|p| std::fs::read_dir(p.path()).into_iter().flatten().flatten())
                .map(|e| e.path())
                .collect()
        };
        while !staged().is_empty() {
            assert!(std::time::Instant::now() < deadline, "{:?}", staged());
            std::thread::sleep(Duration::from_millis(20));
        }
        m.unmount();
    }
    let data = env.get(&key(&env, "big.bin"));
    assert_eq!(data.len(), 17_000_000);
    let (_m, s) = read_without_get(&env, c, "big.bin", &data);
    assert!(s["data_cache_hits"] >= 17, "{s:?}");
}
