//! The tokio runtime adapter for coral-core (filled in by the node issue).
