//! Logs a test reads back: a `tracing` subscriber for the current thread
//! that writes into a buffer. Tests using it run on the current-thread
//! runtime, so the manager's spawned tasks log into it too.

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
