//! The `main` of a benchmark binary that writes one section of
//! BENCHMARKS.md (`benches/replay.rs`, `outbox.rs`, `near.rs`, ...).

use std::future::Future;

/// Runs `report` on a multi-threaded tokio runtime, prints the section it
/// returns, and with `--append PATH` appends it to that file (what the full
/// `bash scripts/bench.sh` run does). Under `cargo test --all-targets` (no
/// `--bench` argument) it only says how to run it: `benches/{name}`, `bash
/// scripts/bench.sh {mode}`.
///
/// # Panics
/// When the runtime cannot be built or the file cannot be written: a
/// benchmark that cannot record its figures should stop loudly.
pub fn section_main<Fut: Future<Output = String>>(name: &str, mode: &str, report: impl FnOnce() -> Fut) {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("benches/{name}: not run under `cargo test`; use `bash scripts/bench.sh {mode}`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = runtime.block_on(report());
    print_and_append(name, &report);
}

/// Prints `report`, and with `--append PATH` among the arguments appends
/// it to that file (for benchmarks that build their own runtime).
///
/// # Panics
/// When the file cannot be written.
pub fn print_and_append(name: &str, report: &str) {
    println!("{report}");
    let args: Vec<String> = std::env::args().collect();
    if let Some(path) = args.iter().position(|a| a == "--append").and_then(|i| args.get(i + 1)) {
        let mut text = std::fs::read_to_string(path).unwrap_or_default();
        text.push('\n');
        text.push_str(report);
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {path}: {e}"));
        eprintln!("bench: appended the {name} section to {path}");
    }
}

/// The median of `values` (the upper one of an even count).
///
/// # Panics
/// When `values` is empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `p` quantile (0.0..=1.0) of `sorted`, the nearest rank.
///
/// # Panics
/// When `sorted` is empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
