//! The embedded S3 server on its own, through aws-sdk-s3 over HTTP with SigV4: S3's
//! semantics that `s3s-fs` lacks (flat keys, markers, ListMultipartUploads, conditional
//! requests, UploadPartCopy...).

mod common;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use common::*;
use prefixfs::store::{CopySpec, DeleteTarget, ObjectStore};

#[test]
fn marker_keys_and_a_file_beside_a_directory_coexist() {
    let env = Env::embedded();
    env.put("x/", b"");
    env.put("f", b"file");
    env.put("f/g", b"child");
    assert_eq!(env.get("f"), b"file");
    assert_eq!(env.get("f/g"), b"child");
    let head = env.rt.block_on(env.s3.head("x/")).unwrap();
    assert_eq!(head.size, 0);
    let page = env.rt.block_on(env.s3.list("", Some("/"), None, None)).unwrap();
    assert_eq!(page.common_prefixes, vec!["f/", "x/"]);
    assert_eq!(
        page.objects.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
        vec!["f"]
    );
}

#[test]
fn list_objects_v2_paginates_with_prefix_and_delimiter() {
    let env = Env::embedded();
    for i in 0..25 {
        env.put(&format!("p/a/{i:02}"), b"1");
        env.put(&format!("p/d{i:02}/x"), b"1");
    }
    env.put("q/other", b"1");
    let mut items = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = env
            .rt
            .block_on(env.s3.list("p/", Some("/"), token.as_deref(), Some(7)))
            .unwrap();
        pages += 1;
        assert!(page.objects.len() + page.common_prefixes.len() <= 7);
        items.extend(page.common_prefixes);
        items.extend(page.objects.into_iter().map(|o| o.key));
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    items.sort();
    let mut expected: Vec<String> = (0..25).map(|i| format!("p/d{i:02}/")).collect();
    expected.push("p/a/".into());
    expected.sort();
    assert_eq!(items, expected);
    assert_eq!(pages, 4);
    // start-after and no delimiter
    let c = env.s3.client();
    let r = env
        .rt
        .block_on(
            c.list_objects_v2()
                .bucket(BUCKET)
                .prefix("p/a/")
                .start_after("p/a/20")
                .send(),
        )
        .unwrap();
    let keys: Vec<_> = r.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, vec!["p/a/21", "p/a/22", "p/a/23", "p/a/24"]);
}

#[test]
fn ranged_get_copy_and_delete_objects() {
    let env = Env::embedded();
    env.put("k", b"0123456789");
    let part = env.rt.block_on(env.s3.get("k", Some(2..5), None)).unwrap();
    assert_eq!(&part[..], b"234");
    let tail = env.rt.block_on(env.s3.get("k", Some(8..100), None)).unwrap();
    assert_eq!(&tail[..], b"89");
    env.rt
        .block_on(env.s3.copy(&CopySpec::new("k", "dir/copy of k+é")))
        .unwrap();
    assert_eq!(env.get("dir/copy of k+é"), b"0123456789");
    let failed = env
        .rt
        .block_on(env.s3.delete_many(&[
            DeleteTarget::any("k"),
            DeleteTarget::any("dir/copy of k+é"),
            DeleteTarget::any("never-was"),
        ]))
        .unwrap();
    assert!(failed.is_empty());
    assert!(env.keys().is_empty());
}

#[test]
fn conditional_requests_are_honoured() {
    let env = Env::embedded();
    let c = env.s3.client();
    let put = env
        .rt
        .block_on(
            c.put_object()
                .bucket(BUCKET)
                .key("k")
                .body(ByteStream::from_static(b"v1"))
                .send(),
        )
        .unwrap();
    let etag = put.e_tag().unwrap().to_string();
    // GET If-None-Match with the current ETag: 304.
    let r = env
        .rt
        .block_on(c.get_object().bucket(BUCKET).key("k").if_none_match(&etag).send());
    assert_eq!(r.unwrap_err().raw_response().unwrap().status().as_u16(), 304);
    // HEAD If-Match with another ETag: 412.
    let r = env
        .rt
        .block_on(c.head_object().bucket(BUCKET).key("k").if_match("\"nope\"").send());
    assert_eq!(r.unwrap_err().raw_response().unwrap().status().as_u16(), 412);
    // PUT If-None-Match: * on an existing key: 412, and the object is unchanged.
    let r = env.rt.block_on(
        c.put_object()
            .bucket(BUCKET)
            .key("k")
            .if_none_match("*")
            .body(ByteStream::from_static(b"v2"))
            .send(),
    );
    assert_eq!(r.unwrap_err().raw_response().unwrap().status().as_u16(), 412);
    assert_eq!(env.get("k"), b"v1");
    let r = env
        .rt
        .block_on(c.get_object().bucket(BUCKET).key("k").if_match(&etag).send());
    assert!(r.is_ok());
}

/// Every request that changes or removes an object can name the version it acts on, and
/// the server holds it to that (issue 21): a stale ETag leaves the object as it is.
#[test]
fn deletes_copies_and_reads_name_their_version() {
    use prefixfs::store::{StoreError, WriteIf};
    let env = Env::embedded();
    let put = |k: &str, body: &'static [u8]| {
        env.rt
            .block_on(
                env.s3
                    .put_if(k, bytes::Bytes::from_static(body), &Default::default(), None),
            )
            .unwrap()
    };
    let v1 = put("k", b"v1");
    let v2 = put("k", b"v2, written by someone else");
    let stale = v1.clone();
    // DeleteObjects with the ETag the deleter saw: refused per key, the object stays.
    let failed = env
        .rt
        .block_on(env.s3.delete_many(&[
            DeleteTarget::version("k", stale.clone()),
            DeleteTarget::version("never-was", stale.clone()),
        ]))
        .unwrap();
    let codes: Vec<(&str, &str)> = failed.iter().map(|f| (f.key.as_str(), f.code.as_str())).collect();
    assert_eq!(codes, [("k", "PreconditionFailed"), ("never-was", "NoSuchKey")]);
    assert_eq!(env.get("k"), b"v2, written by someone else");
    // DeleteObject If-Match: the same.
    let e = env.rt.block_on(env.s3.delete("k", stale.as_deref())).unwrap_err();
    assert!(matches!(e, StoreError::PreconditionFailed { .. }), "{e}");
    // A read pinned to the old version is refused, not served the new bytes.
    let e = env
        .rt
        .block_on(env.s3.get("k", Some(0..2), stale.as_deref()))
        .unwrap_err();
    assert!(matches!(e, StoreError::PreconditionFailed { .. }), "{e}");
    assert_eq!(
        &env.rt.block_on(env.s3.get("k", Some(0..2), v2.as_deref())).unwrap()[..],
        b"v2"
    );
    // A copy from the old version, or onto a key that exists with If-None-Match: refused.
    let from_old = CopySpec::new("k", "c").from_version(stale.as_deref());
    let e = env.rt.block_on(env.s3.copy(&from_old)).unwrap_err();
    assert!(matches!(e, StoreError::PreconditionFailed { .. }), "{e}");
    put("taken", b"mine");
    let onto = CopySpec::new("k", "taken").only_if(Some(&WriteIf::Absent));
    let e = env.rt.block_on(env.s3.copy(&onto)).unwrap_err();
    assert!(matches!(e, StoreError::PreconditionFailed { .. }), "{e}");
    assert_eq!(env.get("taken"), b"mine");
    let nope = WriteIf::Matches("\"nope\"".into());
    let onto_v = CopySpec::new("k", "taken").only_if(Some(&nope));
    assert!(env.rt.block_on(env.s3.copy(&onto_v)).is_err());
    // The current version is deleted, in a batch and alone.
    put("j", b"j");
    let vj = env.rt.block_on(env.s3.head("j")).unwrap().etag;
    let failed = env
        .rt
        .block_on(env.s3.delete_many(&[DeleteTarget::version("k", v2)]))
        .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    env.rt.block_on(env.s3.delete("j", vj.as_deref())).unwrap();
    assert!(env.rt.block_on(env.s3.head("k")).unwrap_err().is_not_found());
    assert!(env.rt.block_on(env.s3.head("j")).unwrap_err().is_not_found());
    // What a mount probes at start: this server honours both conditions.
    let probed = env.rt.block_on(prefixfs::store::delete::probe_delete_conditions(
        &env.s3,
        ".prefixfs/probe",
    ));
    assert_eq!(probed, Some(prefixfs::store::delete::DeleteConditions::S3));
}

#[test]
fn multipart_upload_with_part_copy_and_list_uploads() {
    let env = Env::embedded();
    let c = env.s3.client();
    let five_mib = vec![7u8; 5 * 1024 * 1024];
    env.put("src", &five_mib);
    let up = env
        .rt
        .block_on(c.create_multipart_upload().bucket(BUCKET).key("big").send())
        .unwrap();
    let id = up.upload_id().unwrap().to_string();
    let leftover = env
        .rt
        .block_on(c.create_multipart_upload().bucket(BUCKET).key("abandoned").send())
        .unwrap();

    let uploads = env.rt.block_on(env.s3.list_uploads("")).unwrap();
    let mut ukeys: Vec<_> = uploads.iter().map(|u| u.key.as_str()).collect();
    ukeys.sort();
    assert_eq!(ukeys, vec!["abandoned", "big"]);

    let p1 = env
        .rt
        .block_on(
            c.upload_part_copy()
                .bucket(BUCKET)
                .key("big")
                .upload_id(&id)
                .part_number(1)
                .copy_source(format!("{BUCKET}/src"))
                .send(),
        )
        .unwrap();
    let e1 = p1.copy_part_result().and_then(|r| r.e_tag()).unwrap().to_string();
    let e2 = env
        .rt
        .block_on(env.s3.upload_part("big", &id, 2, bytes::Bytes::from_static(b"tail")))
        .unwrap();
    let done = CompletedMultipartUpload::builder()
        .parts(CompletedPart::builder().part_number(1).e_tag(e1).build())
        .parts(CompletedPart::builder().part_number(2).e_tag(e2).build())
        .build();
    env.rt
        .block_on(
            c.complete_multipart_upload()
                .bucket(BUCKET)
                .key("big")
                .upload_id(&id)
                .multipart_upload(done)
                .send(),
        )
        .unwrap();
    let body = env.get("big");
    assert_eq!(body.len(), 5 * 1024 * 1024 + 4);
    assert_eq!(&body[body.len() - 4..], b"tail");
    let head = env.rt.block_on(env.s3.head("big")).unwrap();
    assert!(head.etag.unwrap().ends_with("-2\""));

    // A small non-last part is refused, as S3 does.
    let id2 = leftover.upload_id().unwrap().to_string();
    let a = env
        .rt
        .block_on(
            env.s3
                .upload_part("abandoned", &id2, 1, bytes::Bytes::from_static(b"small")),
        )
        .unwrap();
    let b = env
        .rt
        .block_on(
            env.s3
                .upload_part("abandoned", &id2, 2, bytes::Bytes::from_static(b"small")),
        )
        .unwrap();
    let r = env
        .rt
        .block_on(env.s3.complete_multipart("abandoned", &id2, &[(1, a), (2, b)]));
    assert!(r.is_err());
    env.rt.block_on(env.s3.abort_multipart("abandoned", &id2)).unwrap();
    assert!(env.rt.block_on(env.s3.list_uploads("")).unwrap().is_empty());
}

#[test]
fn data_and_uploads_survive_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let start = || {
        let mut cfg = prefixfs::server::ServerConfig::local(dir.path().to_path_buf());
        cfg.buckets.push(BUCKET.into());
        cfg.credentials = Some(common::test_credentials());
        rt.block_on(prefixfs::server::start(cfg)).unwrap()
    };
    let srv = start();
    let s3 = rt.block_on(prefixfs::store::aws::AwsStore::connect(&client_config(&srv.endpoint())));
    rt.block_on(s3.put("a/b", bytes::Bytes::from_static(b"kept"), &Default::default()))
        .unwrap();
    let id = rt
        .block_on(s3.create_multipart("pending", &Default::default()))
        .unwrap();
    rt.block_on(srv.shutdown());
    let srv = start();
    let s3 = rt.block_on(prefixfs::store::aws::AwsStore::connect(&client_config(&srv.endpoint())));
    assert_eq!(&rt.block_on(s3.get("a/b", None, None)).unwrap()[..], b"kept");
    let ups = rt.block_on(s3.list_uploads("")).unwrap();
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0].upload_id, id);
    let c = s3.client();
    let del = Delete::builder()
        .objects(ObjectIdentifier::builder().key("a/b").build().unwrap())
        .build()
        .unwrap();
    rt.block_on(c.delete_objects().bucket(BUCKET).delete(del).send())
        .unwrap();
    assert!(rt.block_on(s3.head("a/b")).unwrap_err().is_not_found());
}

/// `prefixfs serve --fault`: errors before a request is applied, lost answers after it,
/// dropped connections and cut-off bodies, each for the operations its rule names.
#[test]
fn serve_injects_the_faults_its_flags_ask_for() {
    let env = Env::embedded();
    let dir = env.dir.path().join("faulty");
    let port = free_port();
    let creds = test_credentials();
    let log = std::fs::File::create(env.dir.path().join("faulty.log")).unwrap();
    let mut child = env
        .prefixfs()
        .arg("serve")
        .arg("--data-dir")
        .arg(&dir)
        .args(["--addr", &format!("127.0.0.1:{port}"), "--bucket", BUCKET])
        .args(["--access-key", &creds.access_key, "--secret-key", &creds.secret_key])
        .args(["--fault", "500:1:PutObject:after", "--fault", "reset:1:HeadObject"])
        .args(["--fault", "truncate:1:GetObject", "--fault", "503:1:DeleteObject"])
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "serve did not listen");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let s3 = env
        .rt
        .block_on(prefixfs::store::aws::AwsStore::connect(&client_config(&format!(
            "http://127.0.0.1:{port}"
        ))));
    let body = bytes::Bytes::from(vec![7u8; 100_000]);
    let put = env.rt.block_on(s3.put("k", body, &Default::default()));
    assert!(
        matches!(put, Err(prefixfs::store::StoreError::Server { status: 500, .. })),
        "{put:?}"
    );
    // Applied all the same: the answer was lost, not the write.
    let listed = env.rt.block_on(s3.list("", None, None, None)).unwrap();
    assert_eq!(
        listed
            .objects
            .iter()
            .map(|o| (o.key.as_str(), o.size))
            .collect::<Vec<_>>(),
        [("k", 100_000)]
    );
    let head = env.rt.block_on(s3.head("k"));
    assert!(
        matches!(head, Err(prefixfs::store::StoreError::Transport { .. })),
        "{head:?}"
    );
    let get = env.rt.block_on(s3.get("k", None, None));
    assert!(
        get.is_err(),
        "a body cut off halfway is an error, not {:?} bytes",
        get.map(|b| b.len())
    );
    let del = env.rt.block_on(s3.delete("k", None));
    assert!(
        matches!(del, Err(prefixfs::store::StoreError::Throttled { .. })),
        "{del:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(env.dir.path().join("faulty.log")).unwrap();
    assert!(log.contains("injecting faults"), "{log}");
}

#[test]
fn a_copy_over_the_copy_limit_is_refused_as_s3_refuses_it() {
    // S3 copies at most 5 GiB in one CopyObject or UploadPartCopy; here 1 MiB.
    let env = Env::embedded_config(|c| c.copy_object_max = 1 << 20);
    env.put("small", &[7u8; 1 << 20]);
    env.put("big", &[7u8; (1 << 20) + 1]);
    env.rt
        .block_on(env.s3.copy(&CopySpec::new("small", "small2")))
        .expect("at the limit");
    let e = env
        .rt
        .block_on(env.s3.copy(&CopySpec::new("big", "big2")))
        .expect_err("over the limit");
    assert!(
        e.to_string()
            .contains("The specified copy source is larger than the maximum allowable size for a copy source: 1048576"),
        "{e}"
    );
    let id = env
        .rt
        .block_on(env.s3.create_multipart("big3", &Default::default()))
        .expect("create");
    let part = env
        .rt
        .block_on(env.s3.upload_part_copy("big3", &id, 1, "big", 0..(1 << 20) + 1, None));
    assert!(part.is_err(), "a part over the limit is refused too");
    // A part copies only from the version of the source it names.
    let etag = env.rt.block_on(env.s3.head("big")).expect("head").etag.expect("etag");
    let stale = env.rt.block_on(
        env.s3
            .upload_part_copy("big3", &id, 1, "big", 0..1 << 20, Some("\"0123\"")),
    );
    assert!(
        matches!(stale, Err(prefixfs::store::StoreError::PreconditionFailed { .. })),
        "{stale:?}"
    );
    env.rt
        .block_on(env.s3.upload_part_copy("big3", &id, 1, "big", 0..1 << 20, Some(&etag)))
        .expect("a part at the limit, of the version named");
    assert!(env.rt.block_on(env.s3.head("big2")).is_err_and(|e| e.is_not_found()));
}
