//! Every subcommand's runner, in one place: [`run`] takes the parsed command line to an exit
//! status. `mount` ([`mount`]: the process set-up, daemonising); the bucket tools
//! ([`tools`]: `rm`, `migrate`, `info`, `fsck`, `doctor`, `init`, and the ad hoc `ls`, `cat`,
//! `cp`, `du`, `find`), each opening its bucket through [`crate::bucket`]; and the local
//! ones ([`local`]: `key`, `serve`, `stats`). Errors are [`ToolError`]s, printed once here.

mod local;
mod mount;
mod tools;

use crate::cli::{Cli, Command};
use crate::error::{ToolError, ToolResult};
use std::process::ExitCode;

/// Runs `cli`'s subcommand to its end; the exit status it should leave with.
pub fn run(cli: Cli) -> ExitCode {
    let log_file = match &cli.command {
        Command::Mount(m) if !m.foreground => None, // the parent only waits; the child logs
        _ => Some(()),
    };
    if log_file.is_some() {
        crate::logging::init(&cli.log_level);
    }
    let result = match cli.command {
        Command::Mount(m) if !m.foreground => mount::daemonize(&m),
        Command::Mount(m) => mount::run_mount(*m),
        Command::Init(a) => tools::run_init(a),
        Command::Key(a) => local::run_key(a),
        Command::Serve(a) => local::run_serve(a),
        Command::Stats(a) => local::run_stats(a),
        Command::Rm(a) => tools::run_rm(a),
        Command::Migrate(a) => tools::run_migrate(a),
        Command::Info(a) => tools::run_info(a),
        Command::Doctor(a) => return tools::run_doctor(a),
        Command::Ls(a) => tools::adhoc(&a.target, &a.at, async |b, p| {
            crate::adhoc::ls(&b, &p, a.long, a.recursive, &mut stdout()).await
        }),
        Command::Cat(a) => tools::run_cat(a),
        Command::Cp(a) => tools::run_cp(a),
        Command::Du(a) => tools::adhoc(&a.target, &a.at, async |b, p| {
            crate::adhoc::du(&b, &p, a.summarize, &mut stdout()).await
        }),
        Command::Find(a) => tools::adhoc(&a.target, &a.at, async |b, p| {
            let kind = a.kind.as_deref().and_then(|k| k.chars().next());
            crate::adhoc::find(&b, &p, a.name.as_deref(), kind, &mut stdout()).await
        }),
        Command::Generate(a) => crate::cli::generate(&a.out).map_err(ToolError::local(&a.out)),
        Command::Fsck(a) => {
            return match tools::run_fsck(a) {
                Ok(code) => code,
                Err(msg) => {
                    eprintln!("prefixfs: {msg}");
                    ExitCode::from(8)
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("prefixfs: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a tool's work on a runtime of its own (one per command).
pub fn block_on<T>(work: impl Future<Output = ToolResult<T>>) -> ToolResult<T> {
    let rt = tokio::runtime::Runtime::new().map_err(ToolError::Runtime)?;
    rt.block_on(work)
}

/// Standard output for the bucket commands' results. A reader that went away (`prefixfs
/// ls -R s3://b | head`) ends the command quietly with status 0, as `ls | head` expects,
/// instead of an error: nothing the command does after its output matters then.
pub fn stdout() -> QuietPipe<std::io::StdoutLock<'static>> {
    QuietPipe(std::io::stdout().lock())
}

/// A writer whose broken pipe ends the process with status 0 (see [`stdout`]).
pub struct QuietPipe<W>(pub W);

impl<W: std::io::Write> QuietPipe<W> {
    fn quiet<T>(r: std::io::Result<T>) -> std::io::Result<T> {
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            r => r,
        }
    }
}

impl<W: std::io::Write> std::io::Write for QuietPipe<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Self::quiet(self.0.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Self::quiet(self.0.flush())
    }
}
