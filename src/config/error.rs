//! [`ConfigError`]: every way a configuration is refused, each rendered as
//! one line that names the key (or flag) at fault and, where one exists, the
//! fix.

use std::io;
use std::path::PathBuf;

/// Why a configuration was refused.
///
/// `Display` is a single line starting with `config error: `; the CLI
/// prints it after `ringmq: ` and exits with status 2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("config error: cannot read {}: {error}", path.display())]
    Read {
        /// The file as given on the command line.
        path: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },
    /// The file is not valid TOML, has a key the schema does not know, or a
    /// value of the wrong TOML type.
    #[error("config error: {location}: {message}")]
    Parse {
        /// `FILE:LINE:COLUMN` (or just `FILE` when the position is unknown).
        location: String,
        /// What is wrong, naming the key (e.g. `limits.max_inflite`).
        message: String,
    },
    /// A value is out of range or malformed, names a feature this release
    /// does not have, or the settings contradict each other.
    #[error("config error: {message}")]
    Invalid {
        /// What is wrong and how to fix it, starting with the key or flag
        /// (e.g. `limits.max_inflight = 0: must be between 1 and 65535`).
        message: String,
    },
}

impl ConfigError {
    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid { message: message.into() }
    }
}
