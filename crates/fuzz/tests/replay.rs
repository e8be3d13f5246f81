//! Replays every fuzz target over its corpus (`fuzz/corpus/NAME`) and its
//! regressions (`fuzz/regressions/NAME`: inputs that once crashed), so the
//! test suite keeps what fuzzing found, in seconds and on stable. A target
//! without a corpus fails here instead of being skipped.

use std::path::Path;

#[test]
fn every_target_replays_its_corpus_and_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut report = Vec::new();
    for (name, target) in satchel_fuzz::TARGETS {
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let run = std::panic::catch_unwind(|| target(&data));
                assert!(
                    run.is_ok(),
                    "fuzz target {name} fails on {}",
                    path.display()
                );
                n += 1;
            }
        }
        assert!(
            n > 0,
            "fuzz target {name} has no corpus in fuzz/corpus/{name}"
        );
        report.push(format!("{name}: {n}"));
    }
    eprintln!("replayed {}", report.join(", "));
}
