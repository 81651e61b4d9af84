//! What a process that embeds the service (the in-process test harness, `tests/it/in_process.rs`)
//! hands it directly. The binary owns its process and reads these from the environment; an
//! embedding process does not own its environment (setting variables in a multi-threaded process
//! is unsound, and several services may share it), so it states them here. Never read from the
//! config file.

use std::path::PathBuf;

/// Values an embedding process passes instead of the process-wide state the binary reads.
#[derive(Clone, Default)]
pub struct Embedding {
    /// Used instead of `GLITCHLAB_ADMIN_TOKEN`: the secret of the admin token `bootstrap`
    /// (checked like the variable's value).
    pub admin_secret: Option<String>,
    /// The `glitchlab` binary the sandbox re-executes as `sandbox-exec`; none means this
    /// process's own executable (right for the binary, wrong for a test process).
    pub sandbox_exe: Option<PathBuf>,
}

/// The secret stays out of debug output, like every other secret the service holds.
impl std::fmt::Debug for Embedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedding")
            .field("admin_secret", &self.admin_secret.as_ref().map(|_| "[set]"))
            .field("sandbox_exe", &self.sandbox_exe)
            .finish()
    }
}
