//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`). Stdout is kept for the
//! one line that says where the service listens. Every line passes the service's [`Redactor`]
//! once start-up has made it ([`redact_logs_with`]): a secret value that reaches a log message
//! (an error quoting a command, say) is written as its marker, like everywhere else.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, OnceLock};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::platform::redact::Redactor;

/// The redactor log lines pass; unset until start-up knows the secrets.
static LOG_REDACTOR: OnceLock<Arc<Redactor>> = OnceLock::new();

/// Installs the global subscriber; a second call (tests) is harmless.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactedStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// From now on, log lines pass `redactor` (the first call wins; the service makes one).
pub(crate) fn redact_logs_with(redactor: Arc<Redactor>) {
    let _ = LOG_REDACTOR.set(redactor);
}

/// Stderr, with each formatted line redacted before it is written.
struct RedactedStderr;

/// One event's bytes, buffered so the whole line is redacted at once, written on drop.
struct RedactedLine(Vec<u8>);

impl<'a> MakeWriter<'a> for RedactedStderr {
    type Writer = RedactedLine;

    fn make_writer(&'a self) -> Self::Writer {
        RedactedLine(Vec::new())
    }
}

impl Write for RedactedLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactedLine {
    fn drop(&mut self) {
        let line = redacted(LOG_REDACTOR.get().map(Arc::as_ref), &self.0);
        // Nowhere to report a failed log write; losing the line is all that can happen.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// A log line as it may be written: through `redactor` when there is one.
fn redacted(redactor: Option<&Redactor>, bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match redactor {
        Some(redactor) if !redactor.is_empty() => redactor.redact(&text),
        _ => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_holding_a_secret_is_written_with_its_marker() {
        let redactor =
            Redactor::new([("GLITCHLAB_TEST_KEY".to_owned(), "sk-live-123456".to_owned())]);
        let line = b"ERROR engine failed: curl -H 'key: sk-live-123456' ...\n";
        let written = redacted(Some(&redactor), line);
        assert!(!written.contains("sk-live-123456"), "{written}");
        assert!(written.contains("[REDACTED:"), "{written}");
        assert_eq!(redacted(None, b"plain\n"), "plain\n");
    }
}
