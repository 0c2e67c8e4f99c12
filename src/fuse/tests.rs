use super::*;
use crate::fs::FsConfig;
use crate::layout::Layout;
use crate::store::memory::MemoryStore;
use crate::store::stats::RequestStats;

#[test]
fn a_panicking_handler_answers_eio_and_the_next_request_is_served() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = FsConfig {
        files: crate::fs::FilesConfig {
            cache_dir: dir.path().to_path_buf(),
            ..Default::default()
        },
        ..FsConfig::default()
    };
    let core = Core::new(
        Layout::new("r", 1).unwrap(),
        Arc::new(MemoryStore::new()),
        Arc::new(RequestStats::default()),
        cfg,
    );
    let fs = FuseFs::new(core, rt.handle().clone(), false);
    let hurt: FsResult<()> = fs.run("lookup", async { panic!("hostile input") });
    assert_eq!(hurt.unwrap_err().errno, libc::EIO);
    let fine: FsResult<u32> = fs.run("lookup", async { Ok(7) });
    assert_eq!(fine.unwrap(), 7);
}
