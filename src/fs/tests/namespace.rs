//! The namespace on its own, as the bucket commands (`prefixfs rm`, `ls`, `find`...) use it:
//! no inodes, no open files, no staging directory.

use super::*;
use crate::fs::Namespace;

#[tokio::test]
async fn a_namespace_without_a_mount_lists_stats_and_removes_a_tree() {
    let r = rig();
    r.plant("2017/02/08/a.txt", b"abc").await;
    r.plant("2017/02/09/b.txt", b"de").await;
    r.plant_dir("2017/02").await;
    r.plant("2018/c.txt", b"f").await;
    let store: Arc<dyn ObjectStore> = r.s3.clone();
    let cfg = crate::fs::NamespaceConfig::default();
    let ns = Namespace::new(r.layout.clone(), store, r.stats.clone(), cfg);
    let mut m = r.meter();

    let root = ns.list_dir(&RelPath::root()).await.unwrap();
    assert_eq!(root.keys().collect::<Vec<_>>(), ["2017", "2018"]);
    assert_eq!(m.take(), counts(&[(OpKind::List, PREFIXES as u64)]));
    let a = ns
        .stat(&RelPath::parse("2017/02/08/a.txt").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.kind, a.size), (Kind::File, 3));
    assert_eq!(m.take(), counts(&[(OpKind::Head, 1)]), "a file: one HEAD");
    assert!(
        ns.stat(&RelPath::parse("2017/02/08/a.txt").unwrap())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(m.take(), counts(&[]), "cached");

    let year = RelPath::parse("2017").unwrap();
    assert_eq!(ns.remove_tree(&year).await.unwrap(), 3, "two files and a marker");
    // The tree's keys (one LIST per prefix); what `2017` is (the root's listing says a
    // directory: one HEAD of its marker, none being there); one DeleteObjects for the three.
    assert_eq!(
        m.take(),
        counts(&[
            (OpKind::List, PREFIXES as u64),
            (OpKind::Head, 1),
            (OpKind::DeleteMany, 1)
        ])
    );
    assert_eq!(
        r.mem().keys(),
        [r.layout.file_key(&RelPath::parse("2018/c.txt").unwrap()).unwrap()]
    );
    assert!(ns.stat(&year).await.unwrap().is_none(), "gone from the namespace");
    // Nothing was written locally: the configured cache directory does not exist.
    assert!(!std::path::Path::new("/nonexistent").exists());
}
