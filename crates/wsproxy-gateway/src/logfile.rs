//! Where the log goes: standard error, or a file that SIGUSR1 reopens
//! (logrotate moves the file, then signals; nginx's `USR1`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tracing_subscriber::fmt::MakeWriter;

/// The log's destination; clones write to the same one.
#[derive(Clone, Debug)]
pub(crate) enum LogWriter {
    /// Standard error.
    Stderr,
    /// A file, appended to, reopened by [`reopen`](Self::reopen).
    File(Arc<LogFile>),
}

/// An open log file and its path.
#[derive(Debug)]
pub(crate) struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogWriter {
    /// Append to `path` (created if missing).
    pub(crate) fn file(path: &Path) -> io::Result<Self> {
        Ok(Self::File(Arc::new(LogFile {
            path: path.to_owned(),
            file: Mutex::new(open(path)?),
        })))
    }

    /// Open the file again by its path; the old one stays in use if that
    /// fails. `false` on standard error (nothing to reopen).
    pub(crate) fn reopen(&self) -> io::Result<bool> {
        match self {
            Self::File(log) => {
                let file = open(&log.path)?;
                *log.file.lock().unwrap_or_else(PoisonError::into_inner) = file;
                Ok(true)
            }
            Self::Stderr => Ok(false),
        }
    }

    /// Whether this writes to a terminal (for colours).
    pub(crate) fn is_terminal(&self) -> bool {
        matches!(self, Self::Stderr) && io::IsTerminal::is_terminal(&io::stderr())
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// One log event's writer.
#[derive(Debug)]
pub(crate) enum EventWriter<'a> {
    Stderr(io::Stderr),
    File(&'a LogFile),
}

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stderr(stderr) => stderr.write(buf),
            Self::File(log) => log
                .file
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stderr(stderr) => stderr.flush(),
            Self::File(_) => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        match self {
            Self::Stderr => EventWriter::Stderr(io::stderr()),
            Self::File(log) => EventWriter::File(log),
        }
    }
}
