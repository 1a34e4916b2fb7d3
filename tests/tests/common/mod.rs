//! Helpers shared by the simulator tests.
#![allow(dead_code)]

/// A scale or seed knob from the environment (`CORAL_SIM_SEED`,
/// `CORAL_SIM_NODES`), as iroh-gossip's simulator does, so a failing seed can
/// be replayed and CI can stay small while `cargo test` by hand goes big.
pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The seed of this run of the simulator tests.
pub(crate) fn seed() -> u64 {
    env_u64("CORAL_SIM_SEED", 1)
}

/// Prints the seed to stderr (shown by the test harness when a test fails)
/// and returns it.
pub(crate) fn announce(test: &str) -> u64 {
    let s = seed();
    eprintln!("{test}: seed {s} (replay with CORAL_SIM_SEED={s})");
    s
}
