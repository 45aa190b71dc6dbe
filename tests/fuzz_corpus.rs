//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`, minimised with
//! `cargo fuzz cmin`) through the same bodies libFuzzer runs, in every `cargo test`: every
//! input the campaign kept, regressions included, must still pass the target's invariants.
//! A target without a corpus folder, or with an empty one, fails: the corpus is part of the
//! suite, not an optional extra. See fuzz/README.md for the campaign.

use std::fs;
use std::path::{Path, PathBuf};

use tandem::testkit::fuzz;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The `[[bin]]` names of fuzz/Cargo.toml: every target libFuzzer runs.
fn fuzz_bins() -> Vec<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml");
    let text = fs::read_to_string(&manifest).expect("reading fuzz/Cargo.toml");
    let doc: toml::Table = text.parse().expect("fuzz/Cargo.toml is TOML");
    doc["bin"]
        .as_array()
        .expect("fuzz/Cargo.toml has [[bin]] entries")
        .iter()
        .map(|b| b["name"].as_str().expect("a [[bin]] name").to_owned())
        .collect()
}

/// Every fuzz binary has a body in the kit, and every body a binary: neither side can
/// gain a target the other does not run.
#[test]
fn every_fuzz_binary_has_a_body_and_back() {
    let mut bins = fuzz_bins();
    bins.sort();
    let mut bodies: Vec<String> = fuzz::targets().map(|(n, _)| n.to_owned()).collect();
    bodies.sort();
    assert_eq!(
        bins, bodies,
        "fuzz/Cargo.toml [[bin]]s vs testkit::fuzz::targets()"
    );
}

fn replay(target: &str) {
    let body = fuzz::target(target).unwrap_or_else(|| panic!("no fuzz body named {target}"));
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (the corpus is checked in)", dir.display()))
        .map(|e| e.expect("reading the corpus folder").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    for f in &files {
        let input = fs::read(f).expect("reading a corpus input");
        let result = std::panic::catch_unwind(|| body(&input));
        assert!(result.is_ok(), "{target}: {} failed", f.display());
    }
}

#[test]
fn every_target_replays_its_corpus() {
    let names: Vec<&str> = fuzz::targets().map(|(n, _)| n).collect();
    std::thread::scope(|s| {
        // One thread per target: the device corpora take a few seconds each.
        let handles: Vec<_> = names
            .iter()
            .map(|&n| (n, s.spawn(move || replay(n))))
            .collect();
        let failed: Vec<&str> = handles
            .into_iter()
            .filter_map(|(n, h)| h.join().is_err().then_some(n))
            .collect();
        assert!(failed.is_empty(), "corpus replay failed for {failed:?}");
    });
}
