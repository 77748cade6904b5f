//! Accept errors: told apart, logged at most once a second with a count,
//! and survived without spinning.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// What kind of accept failure, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptError {
    /// The process or the system ran out of file descriptors (`EMFILE`,
    /// `ENFILE`).
    Descriptors,
    /// Out of memory or buffers (`ENOBUFS`, `ENOMEM`).
    Memory,
    /// One connection failed before it was accepted (reset, aborted):
    /// nothing to do but go on.
    Connection,
    /// Anything else.
    Other,
}

impl AcceptError {
    pub(crate) fn of(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted => return AcceptError::Connection,
            io::ErrorKind::OutOfMemory => return AcceptError::Memory,
            _ => {}
        }
        #[cfg(target_os = "linux")]
        {
            // EMFILE, ENFILE, ENOBUFS, ENOMEM, and EPROTO/EPERM, which
            // Linux returns for one failed connection (accept(2)).
            match error.raw_os_error() {
                Some(24 | 23) => return AcceptError::Descriptors,
                Some(105 | 12) => return AcceptError::Memory,
                Some(71 | 1) => return AcceptError::Connection,
                _ => {}
            }
        }
        AcceptError::Other
    }

    /// The label in metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AcceptError::Descriptors => "descriptors",
            AcceptError::Memory => "memory",
            AcceptError::Connection => "connection",
            AcceptError::Other => "other",
        }
    }
}

/// One warning a second at most, carrying how many were held back.
#[derive(Debug)]
pub(crate) struct Throttled {
    what: &'static str,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttled {
    pub(crate) fn new(what: &'static str) -> Self {
        Throttled {
            what,
            last: None,
            held_back: 0,
        }
    }

    /// Log `detail` at WARN unless one was logged less than a second ago.
    pub(crate) fn warn(&mut self, detail: &dyn std::fmt::Display) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.held_back += 1;
            return;
        }
        tracing::warn!(
            error = %detail,
            more = self.held_back,
            "{} (at most one such warning a second; `more` counts those held back)",
            self.what
        );
        self.last = Some(now);
        self.held_back = 0;
    }
}

/// How long the accept loop waits after a failure that is not one
/// connection's: 10 ms doubling up to 1 s, reset by a success.
#[derive(Debug, Default)]
pub(crate) struct Backoff(u32);

impl Backoff {
    pub(crate) fn next(&mut self) -> Duration {
        let wait = Duration::from_millis(10u64 << self.0.min(7)).min(Duration::from_secs(1));
        self.0 += 1;
        wait
    }

    pub(crate) fn reset(&mut self) {
        self.0 = 0;
    }
}

/// A descriptor held in reserve: when `accept` fails for want of
/// descriptors and nothing can be freed, it is given up to accept one
/// waiting client and tell it `503` (plain HTTP), then taken again.
#[derive(Debug)]
pub(crate) struct Reserve(Option<std::fs::File>);

impl Reserve {
    pub(crate) fn new() -> Self {
        Reserve(open_reserve())
    }

    /// Take a descriptor again if it was lost (best effort).
    pub(crate) fn restore(&mut self) {
        if self.0.is_none() {
            self.0 = open_reserve();
        }
    }

    /// Whether a descriptor is held.
    #[cfg(test)]
    pub(crate) fn is_held(&self) -> bool {
        self.0.is_some()
    }

    /// Out of descriptors with nothing to free: give the reserve up,
    /// accept one waiting client with it and tell it `503` (plain HTTP; a
    /// TLS client is only closed), so that it does not wait in the
    /// backlog for nothing; then take the reserve again. Returns the
    /// client answered, if one was waiting.
    ///
    /// Nothing here awaits: on the accept loop's thread, no other task can
    /// take the freed descriptor between giving it up and taking it back
    /// (Linux fails `accept` for want of a descriptor even with nobody
    /// waiting, so this runs with an empty backlog too).
    pub(crate) fn answer(&mut self, listener: &TcpListener, plain: bool) -> Option<SocketAddr> {
        self.0.take()?;
        let accepted = listener.accept().now_or_never().and_then(Result::ok);
        if let Some((tcp, _)) = &accepted
            && plain
        {
            let _ = tcp.try_write(OVERLOADED);
            // Read what the client sent (its request waited in the
            // queue with it), so that closing sends a FIN after the
            // answer rather than a reset that could destroy it.
            let mut scratch = [0u8; 4096];
            while let Ok(1..) = tcp.try_read(&mut scratch) {}
        }
        // The client's descriptor is closed before the reserve is retaken.
        let peer = accepted.map(|(_, peer)| peer);
        self.restore();
        peer
    }
}

fn open_reserve() -> Option<std::fs::File> {
    #[cfg(unix)]
    {
        std::fs::File::open("/dev/null").ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// What a client accepted on the reserve descriptor is told.
pub(crate) const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 24\r\n\
retry-after: 1\r\nconnection: close\r\n\r\nout of file descriptors\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn errors_are_told_apart() {
        for (raw, kind) in [
            (24, AcceptError::Descriptors),
            (23, AcceptError::Descriptors),
            (105, AcceptError::Memory),
            (103, AcceptError::Connection), // ECONNABORTED
            (71, AcceptError::Connection),
            (22, AcceptError::Other),
        ] {
            assert_eq!(
                AcceptError::of(&io::Error::from_raw_os_error(raw)),
                kind,
                "{raw}"
            );
        }
    }

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut backoff = Backoff::default();
        let waits: Vec<_> = (0..9).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(10));
    }

    /// The race behind a flaky CI run: Linux fails `accept` for want of a
    /// descriptor with nobody waiting too; answering must then not wait
    /// for a client (another task would take the freed descriptor and the
    /// reserve would be lost for good), and must hold the reserve again
    /// when it returns.
    #[tokio::test]
    async fn answering_from_the_reserve_never_waits_and_keeps_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut reserve = Reserve::new();
        assert!(reserve.is_held());
        assert_eq!(reserve.answer(&listener, true), None);
        assert!(reserve.is_held(), "the reserve was not retaken");
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Connected: the connection is in the backlog; the listener is seen
        // readable once the runtime has polled its events.
        let mut answered = None;
        for _ in 0..10_000 {
            answered = reserve.answer(&listener, true);
            if answered.is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let answered = answered.expect("the waiting client was never answered");
        assert_eq!(answered, client.local_addr().unwrap());
        assert!(reserve.is_held());
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.unwrap();
        assert_eq!(response, OVERLOADED);
    }

    #[test]
    fn the_overload_answer_is_well_formed() {
        let text = std::str::from_utf8(OVERLOADED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
