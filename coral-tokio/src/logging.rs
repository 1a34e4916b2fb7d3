//! Logging with `tracing`: human-readable lines by default, one JSON object
//! per line with `--log-json`. `RUST_LOG`, when set, overrides the filter.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber, writing to stderr. A second call is a no-op.
pub fn init(filter: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // An error means a subscriber is already installed (tests): keep it.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
