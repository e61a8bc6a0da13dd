//! On stable, every fuzz target replays its committed corpus and every regression input
//! (`fuzz/regressions/TARGET/`, one file per finding), then runs seeded mutations of its
//! corpus: `THAW_FUZZ_ITERATIONS` per target (default 200), `THAW_FUZZ_SEED` to change the
//! sequence. A failing input is written to `target/fuzz-failures/` and named in the error.

use std::path::{Path, PathBuf};
use thaw_fuzz::mutate::{mutate, Rng};
use thaw_fuzz::{Target, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir`, sorted by name, or none if it does not exist.
fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.path(), std::fs::read(e.path()).ok()?)))
        .collect();
    out.sort();
    out
}

/// Runs `target` on `input`; on a panic, saves the input and says where.
fn run(name: &str, target: Target, input: &[u8], what: &str) -> Result<(), String> {
    let outcome = std::panic::catch_unwind(|| target(input));
    if outcome.is_ok() {
        return Ok(());
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{name}-{:016x}", fnv(input)));
    let _ = std::fs::write(&file, input);
    Err(format!(
        "target {name} panicked on {what}; the input is saved in {} (copy it into fuzz/regressions/{name}/ once fixed)",
        file.display()
    ))
}

/// FNV-1a: names a saved input, and gives each target its own mutation sequence.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

#[test]
fn every_target_replays_its_corpus_and_regressions() {
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "target {name} has no corpus in fuzz/corpus/{name}"
        );
        let regressions = inputs(&fuzz_dir().join("regressions").join(name));
        for (path, input) in corpus.iter().chain(&regressions) {
            if let Err(e) = run(name, *target, input, &path.display().to_string()) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_target_survives_seeded_mutations_of_its_corpus() {
    let iterations: usize = std::env::var("THAW_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("THAW_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        let mut rng = Rng::new(seed ^ fnv(name.as_bytes()));
        for i in 0..iterations {
            let (_, base) = &corpus[rng.below(corpus.len())];
            let (_, other) = &corpus[rng.below(corpus.len())];
            let input = mutate(base, other, &mut rng);
            if let Err(e) = run(
                name,
                *target,
                &input,
                &format!("mutation {i} (seed {seed})"),
            ) {
                failures.push(e);
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
