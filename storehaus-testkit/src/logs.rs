//! Logs a test reads back: a `tracing` subscriber for the current thread
//! that writes into a buffer. Tests using it run on the current-thread
//! runtime, so the manager's spawned tasks log into it too.
//!
//! And logs a person reads after a run that failed: with
//! `STOREHAUS_TEST_LOG=FILE`, [`log_to_file_from_env`] writes the
//! library's log into FILE (`STOREHAUS_TEST_LOG_FILTER`, default
//! `storehaus=debug`; `storehaus=debug,redis=debug` adds redis-rs' own).

use std::io::Write;
use std::sync::{Arc, Mutex};

pub use tracing_subscriber::filter::LevelFilter;

/// The buffer a [`capture_logs`] subscriber writes into.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// The WARN lines that contain `needle`.
    pub fn warnings(&self, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this thread's logs down to `level`. The second value is the
/// guard that keeps the subscriber installed: hold it for the test.
pub fn capture_logs(level: LevelFilter) -> (Captured, impl Sized) {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let captured = Captured::default();
    let writer = captured.clone();
    let guard = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish()
        .set_default();
    (captured, guard)
}

/// With `STOREHAUS_TEST_LOG=FILE`, installs a process-wide subscriber that
/// writes into FILE, filtered by `STOREHAUS_TEST_LOG_FILTER` (default
/// `storehaus=debug`). Without it, or when a subscriber is already
/// installed, does nothing.
pub fn log_to_file_from_env() {
    // Once per process: a second test of the binary must not truncate the
    // file the first one's subscriber writes to.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(install_file_log);
}

fn install_file_log() {
    let Ok(path) = std::env::var("STOREHAUS_TEST_LOG") else {
        return;
    };
    let file = match std::fs::File::create(&path) {
        Ok(file) => Mutex::new(file),
        Err(e) => {
            eprintln!("STOREHAUS_TEST_LOG={path}: {e}; not logging");
            return;
        }
    };
    let filter = std::env::var("STOREHAUS_TEST_LOG_FILTER").unwrap_or_else(|_| "storehaus=debug".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(file)
        .try_init();
}
