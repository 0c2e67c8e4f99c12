use super::*;

#[test]
fn locks_on_the_mount_are_found_in_proc_locks() {
    let mountinfo = "36 35 98:0 / /mnt1 rw - ext4 /dev/root rw\n\
                     412 36 0:58 / /mnt/my\\040bucket rw - fuse.prefixfs prefixfs rw\n";
    let tag = lock_tag(mountinfo, std::path::Path::new("/mnt/my bucket")).unwrap();
    assert_eq!(tag, "00:3a:");
    let locks = "1: POSIX  ADVISORY  WRITE 100 08:01:1234 0 EOF\n\
                 2: FLOCK  ADVISORY  WRITE 4242 00:3a:7 0 EOF\n\
                 2: -> FLOCK  ADVISORY  WRITE 4343 00:3a:7 0 EOF\n";
    assert_eq!(lock_on(locks, &tag), Some(("FLOCK", "4242")));
    assert_eq!(lock_on("1: POSIX  ADVISORY  WRITE 100 08:01:1234 0 EOF\n", &tag), None);
    assert_eq!(lock_tag(mountinfo, std::path::Path::new("/elsewhere")), None);
}

#[test]
fn mount_points_are_read_from_mountinfo_with_escapes() {
    let table = "22 1 0:21 / / rw - ext4 /dev/sda1 rw\n\
                 40 22 0:50 / /mnt/with\\040space rw,nosuid - fuse.prefixfs prefixfs:b rw\n";
    let points: Vec<PathBuf> = mount_points(table).collect();
    assert_eq!(points, vec![PathBuf::from("/"), PathBuf::from("/mnt/with space")]);
}

#[test]
fn an_existing_mount_point_is_refused() {
    let err = check_not_mounted(std::path::Path::new("/proc")).unwrap_err();
    assert!(
        matches!(&err, MountError::AlreadyMounted { canonical, .. } if canonical == std::path::Path::new("/proc")),
        "{err:?}"
    );
    assert!(err.to_string().contains("umount /proc"), "{err}");
    let t = tempfile::tempdir().unwrap();
    assert!(check_not_mounted(t.path()).is_ok());
    let missing = t.path().join("missing");
    let err = check_not_mounted(&missing).unwrap_err();
    assert!(
        matches!(&err, MountError::Mountpoint { path, source } if *path == missing && source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
}
