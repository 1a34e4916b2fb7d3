//! Replays the checked-in fuzz corpus through the fuzz target bodies on
//! stable, so every `cargo test` re-checks the inputs fuzzing once found
//! interesting (CONVENTIONS §15). Fuzzing itself is opt-in: `fuzz/smoke.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use coral_core::fuzzing;
use coral_core::wire::Message;

/// A fuzz target's body.
type Target = fn(&[u8]);

/// Every fuzz target in `fuzz/fuzz_targets/`, by name, with its body. A new
/// target is one line here.
const TARGETS: &[(&str, Target)] = &[("wire_decode", fuzzing::wire_decode)];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/corpus/<target>/`, in a stable order.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn corpus_replays_without_a_failure() {
    for (target, run) in TARGETS {
        let files = corpus(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target}/ is empty or gone");
        let failed: Vec<String> = files
            .iter()
            .filter(|path| {
                let data = fs::read(path).unwrap();
                catch_unwind(AssertUnwindSafe(|| run(&data))).is_err()
            })
            .map(|path| path.display().to_string())
            .collect();
        assert!(failed.is_empty(), "{target} fails on {failed:#?}");
    }
}

/// A target without a `TARGETS` line would never be replayed.
#[test]
fn every_fuzz_target_is_replayed() {
    let dir = fuzz_dir().join("fuzz_targets");
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz target {name} is missing from TARGETS"
        );
    }
}

/// The `wire_decode` seeds are real messages: if the layout changes they stop
/// decoding (and would silently seed nothing), so regenerate them with the
/// ignored test below.
#[test]
fn wire_decode_seeds_are_valid_messages() {
    let seeds = fuzzing::seed_messages();
    for (name, _) in &seeds {
        let path = fuzz_dir().join("corpus/wire_decode").join(name);
        let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            Message::decode(&data).is_ok(),
            "seed {name} no longer decodes"
        );
    }
}

/// Rewrites the `wire_decode` seeds from `fuzzing::seed_messages`. Run by
/// hand after a deliberate layout change:
/// `cargo test -p coral-tests --test fuzz_corpus -- --ignored`.
#[test]
#[ignore = "writes into fuzz/corpus; run by hand after a layout change"]
fn regenerate_wire_decode_seeds() {
    let dir = fuzz_dir().join("corpus/wire_decode");
    fs::create_dir_all(&dir).unwrap();
    for (name, msg) in fuzzing::seed_messages() {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        fs::write(dir.join(name), bytes).unwrap();
    }
}
