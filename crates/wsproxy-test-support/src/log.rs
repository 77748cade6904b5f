//! Log lines captured for a test.

use std::sync::{Arc, Mutex};

/// Log lines written on this thread, captured for a test.
#[derive(Clone, Debug, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Keeps a capture going: the thread's default subscriber, and a second
/// live dispatcher.
///
/// tracing caches each callsite's interest once, for the whole process.
/// While exactly one dispatcher exists, a callsite is judged by the
/// default of whichever thread reaches it first: a sibling test's thread
/// with no subscriber caches "never", and this thread's capture then
/// misses the line (tokio-rs/tracing#3611). With two, every callsite is
/// judged by all of them, this capture included.
#[derive(Debug)]
pub struct Capturing {
    _default: tracing::subscriber::DefaultGuard,
    _anchor: tracing::Dispatch,
}

impl Captured {
    /// This thread's INFO and higher log lines until the guard drops (on a
    /// current-thread runtime, the proxy's tasks log here too).
    pub fn start() -> (Self, Capturing) {
        Self::start_filtered("info")
    }

    /// This thread's log lines that the `RUST_LOG`-style `directives`
    /// let through (e.g. span-scoped ones: `warn,[tunnel]=info`), until
    /// the guard drops.
    pub fn start_filtered(directives: &str) -> (Self, Capturing) {
        let captured = Self::default();
        // Registered as a dispatcher, interested in nothing.
        let anchor = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::new());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(directives))
            .finish();
        // Registering it judges every callsite again, by both.
        let default = tracing::subscriber::set_default(subscriber);
        (
            captured,
            Capturing {
                _default: default,
                _anchor: anchor,
            },
        )
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The captured lines.
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
}
