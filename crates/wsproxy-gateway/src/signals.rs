//! The signals an operator sends, as nginx's take them: HUP reloads the
//! configuration, USR1 reopens the log file, TERM and INT drain within
//! the shutdown timeout, QUIT drains with no deadline (and a TERM while
//! it does brings the deadline back), USR2 starts a binary upgrade (see
//! `upgrade`). None of them ends the process by its default action.

use std::io;

#[cfg(unix)]
use tokio::signal::unix::{Signal as Stream, SignalKind, signal};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGHUP: read the configuration again.
    Reload,
    /// SIGUSR1: reopen the log file.
    ReopenLog,
    /// SIGUSR2: start the binary again on the listening sockets.
    Upgrade,
    /// SIGTERM or SIGINT: drain within the shutdown timeout, then stop.
    Stop(&'static str),
    /// SIGQUIT: drain with no deadline, then stop.
    Quit,
    /// Not a signal: a watched file changed (`watch`); reload as SIGHUP.
    Changed,
}

/// The signals, listened to from creation on.
#[derive(Debug)]
pub(crate) struct Signals {
    #[cfg(unix)]
    streams: Vec<(Stream, Signal)>,
}

impl Signals {
    /// Listen for every signal above (their default actions are off from
    /// here on).
    pub(crate) fn new() -> io::Result<Self> {
        #[cfg(unix)]
        {
            let streams = [
                (SignalKind::hangup(), Signal::Reload),
                (SignalKind::user_defined1(), Signal::ReopenLog),
                (SignalKind::user_defined2(), Signal::Upgrade),
                (SignalKind::terminate(), Signal::Stop("SIGTERM")),
                (SignalKind::interrupt(), Signal::Stop("SIGINT")),
                (SignalKind::quit(), Signal::Quit),
            ]
            .into_iter()
            .map(|(kind, what)| Ok((signal(kind)?, what)))
            .collect::<io::Result<_>>()?;
            Ok(Self { streams })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal.
    pub(crate) async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            let polls = self.streams.iter_mut().map(|(stream, what)| {
                let what = *what;
                Box::pin(async move {
                    stream.recv().await;
                    what
                })
            });
            futures_util::future::select_all(polls).await.0
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop("interrupt")
        }
    }
}
