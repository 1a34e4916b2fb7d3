//! The node's persistent identity in its data directory.
//!
//! A node's id is derived from its RPC address (spec §1.1), so what persists
//! is the seed of its random generator, together with the address it was
//! created for: a node restarted with the same data directory and address
//! replays the same random choices, and a changed address (hence a new id)
//! is reported instead of passing silently.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file inside the data directory.
pub const FILE_NAME: &str = "identity.toml";

/// What `identity.toml` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The seed of the node's random generator.
    pub seed: u64,
    /// The RPC address the node had when the file was written.
    pub rpc: SocketAddr,
    /// The node id that address gave, hex (for the operator's eyes).
    pub id: String,
}

/// The data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading, creating or writing failed.
    #[error("cannot use data directory file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not an identity.
    #[error("invalid identity file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

/// A seed drawn from the operating system.
pub fn os_seed() -> u64 {
    // getrandom failing means the OS has no entropy source at all; fall back
    // to the clock and the process id, which still differ between runs.
    getrandom::u64().unwrap_or_else(|_| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id()).rotate_left(32)
    })
}

/// Loads the identity in `dir`, or creates one with a fresh seed for `rpc`.
/// Returns the identity and whether it was just created.
pub fn load_or_create(dir: &Path, rpc: SocketAddr) -> Result<(Identity, bool), IdentityError> {
    let path = dir.join(FILE_NAME);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| IdentityError::Io { path, source }
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id: Identity = toml::from_str(&text).map_err(|e| IdentityError::Parse {
                path: path.clone(),
                message: e.to_string().trim_end().to_owned(),
            })?;
            Ok((id, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let identity = Identity {
                seed: os_seed(),
                rpc,
                id: coral_core::id::Id::for_node(rpc).to_string(),
            };
            let body = toml::to_string(&identity).map_err(|e| IdentityError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let text = format!(
                "# Written by `coral node` on first start. The node id derives from\n\
                 # the RPC address; the seed makes its random choices replayable.\n{body}"
            );
            std::fs::write(&path, text).map_err(io(&path))?;
            Ok((identity, true))
        }
        Err(e) => Err(IdentityError::Io { path, source: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded() {
        let dir = std::env::temp_dir().join(format!("coral-identity-{}", os_seed()));
        let rpc: SocketAddr = "127.0.0.1:8091".parse().unwrap();
        let (a, created) = load_or_create(&dir, rpc).unwrap();
        assert!(created);
        let (b, created) = load_or_create(&dir, rpc).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        std::fs::write(dir.join(FILE_NAME), "seed = \"x\"").unwrap();
        let e = load_or_create(&dir, rpc).unwrap_err().to_string();
        assert!(e.contains(FILE_NAME), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
