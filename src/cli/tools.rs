//! The flags of the subcommands that do not mount (migrate, fsck, info, the ad hoc
//! commands), and the generated man pages and completions.

use super::{Cli, ConnArgs};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// s3://BUCKET[/ROOT] of the keys as they are
    pub from: String,
    /// s3://BUCKET[/ROOT] of the new layout (the same bucket)
    pub to: String,
    /// Prefix count of the source when it has no layout descriptor [default: 1, plain keys]
    #[arg(long)]
    pub from_prefix_count: Option<u32>,
    /// Prefix count of the destination when it has no layout descriptor yet [default: 16]
    #[arg(long)]
    pub to_prefix_count: Option<u32>,
    /// Copies in flight at once.
    #[arg(long, default_value_t = 64)]
    pub jobs: usize,
    /// Print what would be copied (objects, bytes) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// After every copy is verified, delete the source's objects (interleaved, in bulk).
    #[arg(long)]
    pub delete_source: bool,
    /// Objects larger than this are copied part by part (UploadPartCopy).
    #[arg(long, default_value_t = crate::migrate::COPY_OBJECT_MAX, hide = true)]
    pub copy_object_max: u64,
    /// Part size of those copies, in MiB.
    #[arg(long, default_value_t = 512, hide = true)]
    pub copy_part_mib: u64,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct FsckArgs {
    /// s3://BUCKET[/ROOT]
    pub target: String,
    /// Move misplaced keys to their hash prefix, and abort incomplete multipart uploads older
    /// than --abort-uploads-older-than. Foreign keys are never touched.
    #[arg(long)]
    pub repair: bool,
    /// Hours an incomplete upload must have been left before --repair aborts it (younger
    /// ones may belong to a mount writing now).
    #[arg(long, default_value_t = 24.0)]
    pub abort_uploads_older_than: f64,
    /// Listings and moves in flight at once.
    #[arg(long, default_value_t = 32)]
    pub jobs: usize,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// s3://BUCKET[/ROOT]
    pub target: String,
    /// Listings in flight at once.
    #[arg(long, default_value_t = 32)]
    pub jobs: usize,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args, Clone)]
pub struct DoctorArgs {
    /// s3://BUCKET[/ROOT]
    pub target: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Where an ad hoc command's s3:// target has its layout.
#[derive(Debug, Args, Clone, Default)]
pub struct AdhocConn {
    /// The layout's ROOT inside the bucket; default: the shallowest part of the path that
    /// holds a layout descriptor (one GET per level tried).
    #[arg(long)]
    pub root: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// s3://BUCKET/ROOT[/PATH]
    pub target: String,
    /// Long format: type and mode, size, modification time.
    #[arg(short = 'l')]
    pub long: bool,
    /// Every directory below too.
    #[arg(short = 'R')]
    pub recursive: bool,
    #[command(flatten)]
    pub at: AdhocConn,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    /// s3://BUCKET/ROOT/PATH...
    #[arg(required = true)]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub at: AdhocConn,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// A local path or s3://BUCKET/ROOT/PATH
    pub src: String,
    /// A local path or s3://BUCKET/ROOT/PATH (the other side)
    pub dst: String,
    /// Copy directories and everything in them.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub at: AdhocConn,
}

#[derive(Debug, Args)]
pub struct DuArgs {
    /// s3://BUCKET/ROOT[/PATH]
    pub target: String,
    /// Only the total.
    #[arg(short = 's', long)]
    pub summarize: bool,
    #[command(flatten)]
    pub at: AdhocConn,
}

#[derive(Debug, Args)]
pub struct FindArgs {
    /// s3://BUCKET/ROOT[/PATH]
    pub target: String,
    /// Only names matching this shell pattern (as find -name).
    #[arg(long)]
    pub name: Option<String>,
    /// Only this type: f (file), d (directory), l (symlink).
    #[arg(long = "type", value_parser = ["f", "d", "l"])]
    pub kind: Option<String>,
    #[command(flatten)]
    pub at: AdhocConn,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Directory to write man/ (prefixfs.1, prefixfs-SUBCOMMAND.1) and completions/ into.
    pub out: PathBuf,
}

/// Writes the man pages (one per subcommand, as `man prefixfs-mount`) and the bash, zsh and
/// fish completions, all generated from the CLI definition.
pub fn generate(out: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::Man::new(cmd.clone()).render(&mut std::fs::File::create(man.join("prefixfs.1"))?)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("prefixfs-{}", sub.get_name());
        // A one-shot command: the names live until it exits.
        let page = sub.clone().name(&*Box::leak(name.clone().into_boxed_str()));
        clap_mangen::Man::new(page).render(&mut std::fs::File::create(man.join(format!("{name}.1")))?)?;
    }
    for (shell, file) in [
        (clap_complete::Shell::Bash, "prefixfs"),
        (clap_complete::Shell::Zsh, "_prefixfs"),
        (clap_complete::Shell::Fish, "prefixfs.fish"),
    ] {
        let mut cmd = Cli::command();
        clap_complete::generate(
            shell,
            &mut cmd,
            "prefixfs",
            &mut std::fs::File::create(completions.join(file))?,
        );
    }
    Ok(())
}
