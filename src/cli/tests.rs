use super::*;

#[test]
fn s3_urls() {
    assert_eq!(parse_s3_url("s3://b").unwrap(), ("b".into(), "".into()));
    assert_eq!(parse_s3_url("s3://b/x/y/").unwrap(), ("b".into(), "x/y".into()));
    assert!(parse_s3_url("b/x").is_err());
    assert!(parse_s3_url("s3:///x").is_err());
}

fn parse_mount(args: &[&str]) -> Result<MountArgs, clap::Error> {
    let argv = expand_mount_options(args.iter().map(std::ffi::OsString::from));
    match Cli::try_parse_from(argv)?.command {
        Command::Mount(m) => Ok(*m),
        _ => panic!("not a mount command: {args:?}"),
    }
}

#[test]
fn fstab_options_become_flags() {
    let m = parse_mount(&[
            "prefixfs", "mount", "s3://b/r", "/tmp", "-o",
            "rw,_netdev,x-systemd.automount,allow_other,endpoint_url=http://127.0.0.1:9000,force_path_style,prefix_count=256,metadata_ttl=2.5,ro",
        ])
        .unwrap();
    assert!(m.allow_other && m.conn.force_path_style && m.read_only);
    assert_eq!(m.conn.endpoint_url.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(m.prefix_count, Some(256));
    assert_eq!(m.metadata_ttl, 2.5);
    let err = parse_mount(&["prefixfs", "mount", "s3://b/r", "/tmp", "-obogus=1"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("bogus"), "{err}");
}

/// Walks the definition of `mount`: each long flag, given as `-o name[=value]`, parses to
/// exactly what `--name value` parses to, and changes something.
#[test]
fn every_mount_flag_is_a_mount_option() {
    use clap::CommandFactory;
    let base = ["prefixfs", "mount", "s3://b/r", "/tmp"];
    let default = format!("{:?}", parse_mount(&base).unwrap());
    let cli = Cli::command();
    let mount = cli.find_subcommand("mount").expect("mount subcommand");
    let mut checked = 0;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, [5u8; 32]).unwrap();
    std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let key_file = key_file.to_str().unwrap();
    for arg in mount.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let takes_value = !matches!(arg.get_action(), clap::ArgAction::SetTrue | clap::ArgAction::Count);
        let value = match long {
            "endpoint-url" => "http://127.0.0.1:1",
            "metrics-addr" => "127.0.0.1:9109",
            "file-mode" => "600",
            "dir-mode" => "700",
            "log-level" => "debug",
            "cache-dir" | "data-dir" | "log-file" | "data-cache" => "/tmp/x",
            "region" | "profile" => "p",
            "abort-uploads-older-than" | "settled-after" => "2.5",
            "content-type" => "none",
            "storage-class" => "STANDARD_IA",
            "sse" => "aws:kms",
            "sse-kms-key-id" => "alias/k",
            "sse-c-key-file" => key_file,
            "expected-bucket-owner" => "123456789012",
            "upload-checksum" => "off",
            _ => "3",
        };
        let name = long.replace('-', "_");
        let (opt, flags): (String, Vec<&str>) = if takes_value {
            (format!("{name}={value}"), vec![long, value])
        } else {
            (name.clone(), vec![long])
        };
        let via_option = parse_mount(&[&base[..], &["-o", &opt]].concat()).unwrap_or_else(|e| panic!("-o {opt}: {e}"));
        let dashed = format!("--{}", flags[0]);
        let mut argv: Vec<&str> = base.to_vec();
        argv.push(&dashed);
        argv.extend(&flags[1..]);
        let via_flag = parse_mount(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let got = format!("{via_option:?}");
        assert_eq!(got, format!("{via_flag:?}"), "-o {opt}");
        if long != "log-level" {
            assert_ne!(got, default, "-o {opt} changed nothing");
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} flags");
}

/// Issue 23: every flag of every command says what it does in `--help`.
#[test]
fn every_flag_has_help() {
    use clap::CommandFactory;
    let cli = Cli::command();
    let mut missing = Vec::new();
    for sub in cli.get_subcommands() {
        for arg in sub.get_arguments() {
            if arg.is_hide_set() || arg.get_long().is_none() || matches!(arg.get_long(), Some("help" | "version")) {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{} --{}", sub.get_name(), arg.get_long().unwrap_or_default()));
            }
        }
    }
    assert!(missing.is_empty(), "flags without help: {missing:?}");
}

#[test]
fn modes() {
    assert_eq!(parse_mode("644", "m").unwrap(), 0o644);
    assert!(parse_mode("999", "m").is_err());
}
