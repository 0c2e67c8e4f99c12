//! Where log lines go and how they look. On a terminal: coloured lines with timestamps. In a
//! file: plain lines, the file reopened on SIGHUP (logrotate). Under systemd (stderr is the
//! journal's stream): no timestamp (the journal adds its own) and each line prefixed with
//! its syslog priority (`<4>` for a warning), which the journal records as the priority.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the global subscriber: `level` (or RUST_LOG) filters, to standard error.
pub fn init(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| EnvFilter::try_new(quiet_unmount(&spec)).ok())
        .or_else(|| EnvFilter::try_new(quiet_unmount(level)).ok())
        .unwrap_or_else(|| EnvFilter::new(quiet_unmount("info")));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if stderr_is_journal() {
        let format = Journald(
            tracing_subscriber::fmt::format()
                .with_target(false)
                .without_time()
                .with_ansi(false),
        );
        let _ = builder
            .with_ansi(false)
            .event_format(format)
            .finish()
            .with(AbandonedReplies)
            .try_init();
    } else {
        // Colour codes only for a person at a terminal, never into a log file or a pipe.
        let _ = builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .with(AbandonedReplies)
            .try_init();
    }
}

/// Leaves out fuser's "Failed to send FUSE reply" when the kernel no longer waits for the
/// answer: ENOENT (the request was interrupted, or ended by an unmount: the kernel does not wait
/// for a release, so `cp f /mnt/ && umount /mnt` ends the mount while the release is still
/// being answered; the work itself finishes before the daemon exits) or ENODEV (the
/// connection is gone). Any other failure to reply is a defect and stays an error.
struct AbandonedReplies;

impl<S: Subscriber> tracing_subscriber::Layer<S> for AbandonedReplies {
    fn event_enabled(&self, event: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) -> bool {
        if *event.metadata().level() != Level::ERROR {
            return true;
        }
        let mut seen = ReplyFailure {
            from_fuser: event.metadata().target().starts_with("fuser"),
            abandoned: false,
        };
        event.record(&mut seen);
        !(seen.from_fuser && seen.abandoned)
    }
}

/// What [`AbandonedReplies`] reads from an event: its target (`log.target` when it came
/// through the `log` crate, as fuser's do) and whether its message is a reply the kernel no
/// longer waits for.
struct ReplyFailure {
    from_fuser: bool,
    abandoned: bool,
}

impl tracing::field::Visit for ReplyFailure {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "log.target" {
            self.from_fuser = value.starts_with("fuser");
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let text = format!("{value:?}");
            self.abandoned = text.starts_with("Failed to send FUSE reply")
                && [libc::ENOENT, libc::ENODEV]
                    .iter()
                    .any(|e| text.ends_with(&format!("(os error {e})")));
        }
    }
}

/// `spec` with fuser's session module at error level, unless `spec` names fuser itself: its
/// only warning ("Failed to umount filesystem: Invalid argument") comes at every unmount by
/// `umount` or `fusermount3 -u` (the kernel has ended the mount already when fuser tries), and
/// a warning at every normal unmount would teach people to ignore warnings.
fn quiet_unmount(spec: &str) -> String {
    let mut spec = spec.to_string();
    if !spec.contains("fuser") {
        spec.push_str(",fuser::session=error");
    }
    // The SDK's warnings (a credential source that found nothing, each a page of Debug
    // output) only when asked for: the failure they lead to is said in one line.
    if !spec.contains("aws") && !spec.contains("debug") && !spec.contains("trace") {
        spec.push_str(",aws_config=error,aws_smithy_runtime=error");
    }
    spec
}

/// Whether standard error is the journal's stream: systemd sets JOURNAL_STREAM to its
/// `device:inode` (a redirected stderr of a child keeps the variable but not the stream).
fn stderr_is_journal() -> bool {
    let Some(want) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a stat into the buffer we own; fd 2 is checked by the call.
    if unsafe { libc::fstat(2, st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so the buffer is initialised.
    let st = unsafe { st.assume_init() };
    want.to_string_lossy() == format!("{}:{}", st.st_dev, st.st_ino)
}

/// The default format behind the priority prefix sd-daemon(3) defines.
struct Journald<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Sends standard error (and so every log line) to `path`, appended, created 0600.
pub fn log_to(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = crate::private::file_options().create(true).append(true).open(path)?;
    // SAFETY: dup2 onto fd 2 of a descriptor we own; the old stream is closed by the kernel.
    if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reopens `log_file` on every SIGHUP (after logrotate moved it); without one, SIGHUP is
/// logged and ignored, never fatal.
pub async fn reopen_on_sighup(log_file: Option<PathBuf>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot handle SIGHUP; the log file is not reopened on it");
        return;
    };
    while hup.recv().await.is_some() {
        match &log_file {
            Some(path) => match log_to(path) {
                Ok(()) => tracing::info!(log_file = %path.display(), "SIGHUP: log file reopened"),
                Err(e) => {
                    tracing::warn!(log_file = %path.display(), error = %e, "SIGHUP: cannot reopen the log file; logging on to the old one")
                }
            },
            None => tracing::info!("SIGHUP: no --log-file to reopen; ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Keeps the message of every event that reaches it.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> tracing_subscriber::Layer<S> for Kept {
        fn on_event(&self, event: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut m = Message(String::new());
            event.record(&mut m);
            self.0.lock().expect("lock").push(m.0);
        }
    }

    #[test]
    fn only_replies_the_kernel_no_longer_waits_for_are_left_out() {
        let kept = Kept::default();
        let subscriber = tracing_subscriber::registry().with(kept.clone()).with(AbandonedReplies);
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: No such file or directory (os error 2)");
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: No such device (os error 19)");
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: Invalid argument (os error 22)");
            tracing::error!("Failed to send FUSE reply: No such file or directory (os error 2)");
            tracing::warn!(target: "fuser::reply", "Failed to send FUSE reply: No such file or directory (os error 2)");
        });
        let kept = kept.0.lock().expect("lock").clone();
        assert_eq!(
            kept,
            [
                "Failed to send FUSE reply: Invalid argument (os error 22)",
                "Failed to send FUSE reply: No such file or directory (os error 2)",
                "Failed to send FUSE reply: No such file or directory (os error 2)",
            ],
            "the first two are left out; another errno, another module's or a warning stay"
        );
    }

    #[test]
    fn fusers_session_and_the_sdks_warnings_are_quiet_unless_asked_for() {
        assert_eq!(
            quiet_unmount("info"),
            "info,fuser::session=error,aws_config=error,aws_smithy_runtime=error"
        );
        assert_eq!(quiet_unmount("debug,fuser=trace"), "debug,fuser=trace");
        assert_eq!(
            quiet_unmount("warn,aws_config=warn"),
            "warn,aws_config=warn,fuser::session=error"
        );
    }
}
