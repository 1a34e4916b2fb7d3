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

/// The path of command-line tool `name`, installing Debian's `package`
/// first when it is missing (as root, with the package registry
/// reachable; the package lists are refreshed once if the first try
/// fails). The issues ask for some flows to be driven by standard tools as
/// well as by a Rust client, so a machine without the tool fails here,
/// saying why, rather than skipping.
pub(crate) fn tool(name: &'static str, version_arg: &str, package: &str) -> &'static str {
    let have = || {
        std::process::Command::new(name)
            .arg(version_arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let install = || {
        std::process::Command::new("apt-get")
            .args(["install", "-y", "-qq", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !have() && !install() {
        let _ = std::process::Command::new("apt-get")
            .args(["update", "-qq"])
            .status();
        install();
    }
    assert!(
        have(),
        "{name} is needed by this test and `apt-get install -y {package}` did not provide it"
    );
    name
}

/// Runs `f` on its own thread and fails the test if it overstays `limit`
/// (a worker's panic is shown as the test's own).
pub(crate) fn bounded(limit: std::time::Duration, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => t.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(p) = t.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(e) => panic!("the test did not finish within {limit:?}: {e}"),
    }
}
