//! Replays the checked-in fuzz corpus through the fuzz target bodies on
//! stable, so every `cargo test` re-checks the inputs fuzzing once found
//! interesting (CONVENTIONS §15). Fuzzing itself is opt-in: `fuzz/smoke.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use coral_core::fuzzing;
use coral_core::rng::Rng;
use coral_core::wire::Message;

/// A fuzz target's body.
type Target = fn(&[u8]);

/// Every fuzz target in `fuzz/fuzz_targets/`, by name, with its body. A new
/// target is one line here.
const TARGETS: &[(&str, Target)] = &[
    ("wire_decode", fuzzing::wire_decode),
    ("node_inputs", fuzzing::node_inputs),
    ("http_head", fuzzing::http_head),
    ("dns_query", fuzzing::dns_query),
];

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

/// Rewrites the `node_inputs` seeds from `fuzzing::seed_node_inputs`. Run by
/// hand after changing the script format or the seed scripts:
/// `cargo test -p coral-tests --test fuzz_corpus -- --ignored`.
#[test]
#[ignore = "writes into fuzz/corpus; run by hand after a script format change"]
fn regenerate_node_inputs_seeds() {
    let dir = fuzz_dir().join("corpus/node_inputs");
    fs::create_dir_all(&dir).unwrap();
    for (name, script) in fuzzing::seed_node_inputs() {
        fs::write(dir.join(name), script).unwrap();
    }
}

/// The checked-in `node_inputs` seeds are the current seed scripts: a
/// change of the script format that forgot to regenerate them would leave
/// the fuzzer starting from noise.
#[test]
fn node_inputs_seeds_are_current() {
    for (name, script) in fuzzing::seed_node_inputs() {
        let path = fuzz_dir().join("corpus/node_inputs").join(name);
        let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(data, script, "seed {name} is stale; regenerate it");
    }
}

/// Fuzzing without libFuzzer, so every `cargo test` drives the node beyond
/// the corpus: seeded random scripts, and random mutations of the seeds
/// (which keep the run deep in joins, puts and gets). Deterministic: a
/// failure prints the input to add to the corpus.
#[test]
fn node_inputs_survive_random_scripts() {
    let seeds: Vec<Vec<u8>> = fuzzing::seed_node_inputs()
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    let mut rng = Rng::new(0x00c0_4a1f_u64);
    for i in 0..5000u64 {
        let data = if i % 2 == 0 {
            let mut data = vec![0u8; rng.below(200) as usize];
            rng.fill(&mut data);
            data
        } else {
            let mut data = seeds[rng.below(seeds.len() as u64) as usize].clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(data.len() as u64) as usize;
                match rng.below(3) {
                    0 => data[at] = rng.u64() as u8,
                    1 => data.insert(at, rng.u64() as u8),
                    _ => {
                        data.remove(at);
                    }
                }
                if data.is_empty() {
                    data.push(0);
                }
            }
            data
        };
        if catch_unwind(AssertUnwindSafe(|| fuzzing::node_inputs(&data))).is_err() {
            panic!("node_inputs fails on script {i}: {data:?}");
        }
    }
}

/// Rewrites the `dns_query` seeds from `fuzzing::seed_dns_queries`:
/// `cargo test -p coral-tests --test fuzz_corpus -- --ignored`.
#[test]
#[ignore = "writes into fuzz/corpus; run by hand after changing the seeds"]
fn regenerate_dns_query_seeds() {
    let dir = fuzz_dir().join("corpus/dns_query");
    fs::create_dir_all(&dir).unwrap();
    for (name, data) in fuzzing::seed_dns_queries() {
        fs::write(dir.join(name), data).unwrap();
    }
}

/// The checked-in DNS seeds are the current ones, and random mutations of
/// them keep the server's promises (deterministic: a failure prints the
/// input to add to the corpus).
#[test]
fn dns_queries_survive_mutations() {
    let seeds = fuzzing::seed_dns_queries();
    for (name, data) in &seeds {
        let path = fuzz_dir().join("corpus/dns_query").join(name);
        let on_disk = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(&on_disk, data, "seed {name} is stale; regenerate it");
    }
    let mut rng = Rng::new(0xd25_u64);
    for i in 0..3000u64 {
        let (_, seed) = &seeds[(i as usize) % seeds.len()];
        let mut data = seed.clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(data.len() as u64) as usize;
            match rng.below(3) {
                0 => data[at] = rng.below(256) as u8,
                1 => {
                    data.truncate(at.max(1));
                }
                _ => data.insert(at, rng.below(256) as u8),
            }
        }
        if catch_unwind(AssertUnwindSafe(|| fuzzing::dns_query(&data))).is_err() {
            panic!("dns_query fails on {data:?}");
        }
    }
}
