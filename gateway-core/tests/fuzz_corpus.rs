//! Every input checked in under `fuzz/corpus/<target>/` (seeds and what fuzzing kept) and
//! `fuzz/regressions/<target>/` (inputs that once crashed a target) goes through the same
//! entry point the fuzz target calls, so a plain `cargo test` on stable exercises them.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_regression_input_replays_through_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, target) in gateway_core::fuzzing::TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no seed");
        let regressions = inputs(&fuzz.join("regressions").join(name));
        for file in corpus.iter().chain(&regressions) {
            let data = std::fs::read(file).expect("read an input");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", file.display());
        }
        eprintln!(
            "{name}: {} corpus, {} regression inputs",
            corpus.len(),
            regressions.len()
        );
    }
}
