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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_says_a_secret_is_set_but_never_shows_it() {
        let embedding = Embedding {
            admin_secret: Some("glt_embedded-secret-0123456789abcdef".to_owned()),
            sandbox_exe: Some(PathBuf::from("/usr/bin/glitchlab")),
        };
        let shown = format!("{embedding:?}");
        assert!(!shown.contains("embedded-secret"), "{shown}");
        assert!(
            shown.contains("[set]") && shown.contains("/usr/bin/glitchlab"),
            "{shown}"
        );
        assert!(format!("{:?}", Embedding::default()).contains("admin_secret: None"));
    }

    #[test]
    fn a_config_file_cannot_set_the_embedding() {
        let refused = crate::config::Config::parse("[embedding]\nadmin_secret = \"x\"\n");
        assert!(refused.is_err(), "{refused:?}");
        let config = crate::config::Config::parse("").unwrap();
        assert!(config.embedding.admin_secret.is_none());
    }
}
