//! The `prefixfs` binary: the command line parsed (mount options expanded), then the
//! library's runner ([`prefixfs::commands::run`]: logging, the subcommand, the exit status).

use clap::Parser;
use prefixfs::cli::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    prefixfs::commands::run(Cli::parse_from(
        prefixfs::cli::expand_mount_options(std::env::args_os()),
    ))
}
