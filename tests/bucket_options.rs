//! Issue 23: the bucket options on every path that writes. A server whose policy demands
//! them (`serve --require-sse`, `--require-checksum`, `--requester-pays`, `--bucket-owner`)
//! takes every write of the mount and of the bucket tools when the options are given, and
//! refuses them when one is missing; the bucket, read through the S3 API, holds objects
//! encrypted and checksummed as asked. moto runs the SSE-KMS paths too (without a policy).

mod common;

use common::{BUCKET, Env, client_config};
use prefixfs::server::Policy;
use prefixfs::store::aws::{AwsConfig, AwsStore, BucketOptions, Checksum, CustomerKey, Encryption};
use std::collections::BTreeSet;
use std::process::Output;

const OWNER: &str = "123456789012";
const KMS_KEY: &str = "alias/prefixfs-test";

/// The harness's own client (listing, HEADs, planted keys) speaking with `opts`.
fn with_client_options(mut env: Env, opts: BucketOptions) -> Env {
    let cfg = AwsConfig {
        options: opts,
        ..client_config(&env.endpoint)
    };
    env.s3 = env.rt.block_on(AwsStore::connect(&cfg));
    env
}

fn prefixfs(env: &Env, args: &[&str], flags: &[&str]) -> Output {
    env.prefixfs()
        .args(args)
        .args(env.conn_args())
        .args(flags)
        .output()
        .expect("prefixfs runs")
}

fn prefixfs_ok(env: &Env, args: &[&str], flags: &[&str]) -> String {
    let out = prefixfs(env, args, flags);
    assert!(
        out.status.success(),
        "prefixfs {args:?} {flags:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every path that writes, through the mount and the bucket tools, with `flags`: the
/// descriptor, a PUT, a multipart upload, a directory marker, a rename (CopyObject), a
/// rename by parts (UploadPartCopy), a chmod (a copy onto itself), an append to a large
/// file (parts copied from the old version), `prefixfs cp`, `fsck --repair` (a move) and
/// `migrate`. Reads what it wrote back.
fn write_everything(env: &Env, flags: &[&str]) {
    let local = env.subdir("local");
    std::fs::write(local.join("up.txt"), b"uploaded by cp\n").expect("local file");
    let mut args = vec!["--part-size-mib", "5", "--copy-object-max-mib", "5"];
    args.extend(flags);
    let mut m = env.mount(16, &args);
    m.ok("echo small > a.txt && head -c 12000000 /dev/urandom > big.bin && mkdir d");
    m.ok("mv a.txt d/a.txt && mv big.bin d/big.bin && chmod 600 d/a.txt");
    m.ok("printf tail >> d/big.bin && cat d/a.txt > /dev/null");
    m.ok("test \"$(cat d/a.txt)\" = small && test $(stat -c %s d/big.bin) = 12000004");
    drop(m);
    prefixfs_ok(
        env,
        &[
            "cp",
            local.join("up.txt").to_str().expect("path"),
            &format!("s3://{BUCKET}/data/up.txt"),
        ],
        flags,
    );
    // A key at the wrong prefix, for fsck to move.
    let layout = env.layout(16);
    let right = layout
        .file_key(&prefixfs::layout::RelPath::parse("moved.txt").expect("path"))
        .expect("key");
    let wrong = if right.starts_with("data/0/") {
        "data/1/moved.txt"
    } else {
        "data/0/moved.txt"
    };
    env.put(wrong, b"misplaced\n");
    let out = prefixfs(env, &["fsck", &format!("s3://{BUCKET}/data"), "--repair"], flags);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("moved 1 misplaced"),
        "fsck --repair: {out:?}"
    );
    env.put("plain/2017/01/01/x.log", b"plain\n");
    prefixfs_ok(
        env,
        &[
            "migrate",
            &format!("s3://{BUCKET}/plain"),
            &format!("s3://{BUCKET}/hashed"),
            "--to-prefix-count",
            "4",
        ],
        flags,
    );
    let mut m = env.mount(16, flags);
    m.ok("test \"$(cat up.txt)\" = 'uploaded by cp' && test \"$(cat moved.txt)\" = misplaced && tail -c 4 d/big.bin | grep -qx tail");
}

/// The objects of the bucket (data keys, descriptors, markers), each HEADed through the
/// SDK asking for its checksum: (key, SSE algorithm, KMS key, SSE-C key MD5, checksum).
type Described = (String, Option<String>, Option<String>, Option<String>, Option<String>);

fn describe(env: &Env, key: Option<&CustomerKey>, raw: Option<&str>) -> Vec<Described> {
    let keys: BTreeSet<String> = env.keys();
    keys.into_iter()
        .map(|k| {
            let mut req = env
                .s3
                .client()
                .head_object()
                .bucket(BUCKET)
                .key(&k)
                .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled);
            if let (Some(c), Some(raw)) = (key, raw) {
                req = req
                    .sse_customer_algorithm("AES256")
                    .sse_customer_key(raw)
                    .sse_customer_key_md5(c.md5());
            }
            let h = env
                .rt
                .block_on(req.send())
                .unwrap_or_else(|e| panic!("HEAD {k}: {e:?}"));
            let checksum = h.checksum_crc32_c().or(h.checksum_crc64_nvme()).map(str::to_string);
            (
                k,
                h.server_side_encryption().map(|s| s.as_str().to_string()),
                h.ssekms_key_id().map(str::to_string),
                h.sse_customer_key_md5().map(str::to_string),
                checksum,
            )
        })
        .collect()
}

fn kms_options() -> BucketOptions {
    BucketOptions {
        encryption: Some(Encryption::Managed {
            algorithm: "aws:kms".into(),
            kms_key_id: Some(KMS_KEY.into()),
        }),
        requester_pays: true,
        expected_owner: Some(OWNER.into()),
        checksum: Some(Checksum::Crc32c),
    }
}

const KMS_FLAGS: [&str; 8] = [
    "--sse",
    "aws:kms",
    "--sse-kms-key-id",
    KMS_KEY,
    "--requester-pays",
    "--expected-bucket-owner",
    OWNER,
    "--upload-checksum=crc32c",
];

fn assert_all_kms(env: &Env, checksums: bool) {
    let described = describe(env, None, None);
    assert!(described.len() >= 8, "{described:?}");
    for (k, sse, kms, _, sum) in &described {
        assert_eq!(sse.as_deref(), Some("aws:kms"), "{k}");
        assert_eq!(kms.as_deref(), Some(KMS_KEY), "{k}");
        if checksums {
            assert!(sum.is_some(), "{k} has a checksum");
        }
    }
}

/// SSE-KMS, requester pays, the expected owner and checksums, against a server that
/// demands all four: every write path passes, and each option left out is refused.
#[test]
fn a_bucket_that_demands_every_option_takes_every_write_path() {
    let env = Env::embedded_config(|c| {
        c.policy = Policy {
            require_sse: Some("aws:kms".into()),
            require_checksum: true,
            requester_pays: true,
            bucket_owner: Some(OWNER.into()),
            public_read: false,
        }
    });
    let env = with_client_options(env, kms_options());
    write_everything(&env, &KMS_FLAGS);
    assert_all_kms(&env, true);

    // Each option left out: the server refuses, and the user reads why.
    let without = |skip: &[&str]| -> Vec<&str> {
        let mut out = Vec::new();
        let mut it = KMS_FLAGS.iter().peekable();
        while let Some(f) = it.next() {
            let takes_value = matches!(*f, "--sse" | "--sse-kms-key-id" | "--expected-bucket-owner");
            let value = if takes_value { it.next().copied() } else { None };
            if skip.contains(f) {
                continue;
            }
            out.push(*f);
            out.extend(value);
        }
        out
    };
    for skip in [&["--requester-pays"][..], &["--expected-bucket-owner"][..]] {
        let out = prefixfs(&env, &["ls", &format!("s3://{BUCKET}/data")], &without(skip));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("access denied"),
            "without {skip:?}: {err}"
        );
    }
    for (skip, answer) in [
        (&["--sse", "--sse-kms-key-id"][..], "AccessDenied"),
        (&["--upload-checksum=crc32c"][..], "checksum"),
    ] {
        let mut flags = without(skip);
        if skip[0].starts_with("--upload-checksum") {
            flags.push("--upload-checksum=off");
        }
        let mut m = env.mount(16, &flags);
        // fsync before close, so that the upload's failure is the writer's.
        let out = m.sh("printf refused | dd of=refused.txt conv=fsync status=none");
        assert!(out.code != 0, "without {skip:?} the write fails: {out:?}");
        let log = m.log_text();
        assert!(log.contains(answer), "without {skip:?}: {}", common::tail(&log, 5));
    }
}

/// moto keeps SSE-KMS as S3 does (it enforces no policy): the same write paths leave every
/// object encrypted with the key named and checksummed.
#[test]
fn moto_keeps_the_encryption_of_every_write_path() {
    let env = with_client_options(Env::moto(), kms_options());
    write_everything(&env, &KMS_FLAGS);
    assert_all_kms(&env, false);
}

/// SSE-C: every write, read, HEAD and copy carries the key; the server keeps its MD5 and
/// refuses a read without it (400) or with another key (403): a mount with the wrong key
/// cannot open the bucket.
#[test]
fn sse_c_goes_with_every_write_read_and_copy() {
    let env = Env::embedded_config(|c| {
        c.policy = Policy {
            require_sse: Some("SSE-C".into()),
            ..Policy::default()
        }
    });
    let key_file = env.dir.path().join("sse-c.key");
    let raw = [42u8; 32];
    std::fs::write(&key_file, raw).expect("key file");
    std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let key = CustomerKey::load(&key_file).expect("key");
    let env = with_client_options(
        env,
        BucketOptions {
            encryption: Some(Encryption::Customer(key.clone())),
            checksum: Some(Checksum::Crc32c),
            ..BucketOptions::default()
        },
    );
    let key_flag = ["--sse-c-key-file", key_file.to_str().expect("path")];
    write_everything(&env, &key_flag);
    let raw_b64 = aws_smithy_types::base64::encode(raw);
    for (k, _, _, md5, sum) in describe(&env, Some(&key), Some(&raw_b64)) {
        assert_eq!(md5.as_deref(), Some(key.md5()), "{k}");
        assert!(sum.is_some(), "{k} has a checksum");
    }
    // A HEAD without the key: refused.
    let some_key = env.keys().into_iter().next().expect("a key");
    let bare = env
        .rt
        .block_on(env.s3.client().head_object().bucket(BUCKET).key(&some_key).send());
    assert!(bare.is_err(), "a HEAD without the key is refused");
    // Another key: the descriptor cannot be read.
    let other = env.dir.path().join("other.key");
    std::fs::write(&other, [7u8; 32]).expect("key file");
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let out = prefixfs(
        &env,
        &["ls", &format!("s3://{BUCKET}/data")],
        &["--sse-c-key-file", other.to_str().expect("path")],
    );
    assert!(!out.status.success(), "another key reads nothing: {out:?}");
    let out = prefixfs(&env, &["ls", &format!("s3://{BUCKET}/data")], &[]);
    assert!(!out.status.success(), "no key reads nothing: {out:?}");
}

/// The other two managed encryptions name themselves on the PUT, the multipart upload and
/// the copy alike, and a server demanding one refuses the other.
#[test]
fn dsse_and_sse_s3_are_named_on_every_write() {
    for algorithm in ["aws:kms:dsse", "AES256"] {
        let env = Env::embedded_config(|c| c.policy.require_sse = Some(algorithm.into()));
        let opts = BucketOptions {
            encryption: Some(Encryption::Managed {
                algorithm: algorithm.into(),
                kms_key_id: None,
            }),
            ..BucketOptions::default()
        };
        let env = with_client_options(env, opts);
        let flags = ["--sse", algorithm, "--part-size-mib", "5", "--copy-object-max-mib", "5"];
        let mut m = env.mount(16, &flags);
        m.ok("echo a > a.txt && head -c 11000000 /dev/zero > big && mkdir d && mv a.txt d/ && mv big d/ && chmod 600 d/a.txt");
        drop(m);
        for (k, sse, ..) in describe(&env, None, None) {
            assert_eq!(sse.as_deref(), Some(algorithm), "{k}");
        }
        let other = if algorithm == "AES256" { "aws:kms" } else { "AES256" };
        let mut m = env.mount(16, &["--sse", other]);
        let out = m.sh("printf x | dd of=x.txt conv=fsync status=none");
        assert!(out.code != 0, "{other} where {algorithm} is demanded: {}", out.stderr);
    }
}

/// A whole-object read is checked against the checksum S3 keeps: bytes corrupted at rest
/// are EIO with a log line naming the mismatch, after one GET (not ten).
#[test]
fn a_corrupt_object_is_eio_not_wrong_bytes() {
    let env = Env::embedded();
    let mut m = env.mount(16, &[]);
    m.ok("echo 'precious-marker-31415' > f.txt");
    drop(m);
    let data = env.dir.path().join("s3");
    let file = walk(&data)
        .into_iter()
        .find(|p| std::fs::read(p).is_ok_and(|b| b.windows(21).any(|w| w == b"precious-marker-31415")))
        .expect("the object's file");
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[0] ^= 0x20;
    std::fs::write(&file, bytes).expect("corrupt");
    let mut m = env.mount(16, &[]);
    let out = m.sh("cat f.txt");
    assert!(
        out.code != 0 && out.stderr.contains("Input/output error"),
        "{}",
        out.stderr
    );
    let log = m.log_text();
    assert!(log.contains("ChecksumMismatch"), "{}", common::tail(&log, 5));
    // The kernel may ask twice (the read, then again after the error); not ten times each.
    let gets = m.stats().get("requests_get").copied().unwrap_or(0);
    assert!((1..=2).contains(&gets), "{gets} GETs: {:?}", m.stats());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `--no-sign-request` on a public bucket: reads work, the mount is read-only (the bucket
/// refused the anonymous probe write) and says so; on a private bucket it is refused.
#[test]
fn anonymous_mounts_of_public_buckets_are_read_only() {
    let env = Env::embedded_config(|c| c.policy.public_read = true);
    let mut m = env.mount(16, &[]);
    m.ok("mkdir 2017 && echo public > 2017/a.txt");
    drop(m);
    let mut m = env.mount(16, &["--no-sign-request"]);
    assert_eq!(m.ok("cat 2017/a.txt").trim(), "public");
    let out = m.sh("echo x > 2017/b.txt");
    assert!(
        out.code != 0 && out.stderr.contains("Read-only file system"),
        "{}",
        out.stderr
    );
    assert!(m.log_text().contains("refuses anonymous writes"));
    drop(m);

    let private = Env::embedded();
    let mut m = private.mount(16, &[]);
    m.ok("echo private > p.txt");
    drop(m);
    let out = prefixfs(
        &private,
        &["ls", &format!("s3://{BUCKET}/data")],
        &["--no-sign-request"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("access denied"), "{err}");
}
