//! Zero-downtime binary upgrade (nginx's `USR2`, Envoy's hot restart):
//! on SIGUSR2 the running process starts the binary at its path again,
//! with the same arguments, handing it its listening sockets (the
//! systemd `LISTEN_FDS` convention: descriptors from 3, their roles in
//! `WSGATE_SOCKETS`). The new process serves on those very sockets
//! (nothing is closed, so no connection waiting in a queue is reset) and,
//! once it serves, sends the old one SIGTERM: the old one stops accepting
//! and drains its tunnels with Close 1001.
//!
//! Should the new process fail to start (a bad binary, a configuration it
//! refuses), the old one logs it and goes on serving.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Command;

use command_fds::{CommandFdExt, FdMapping};

/// The environment variable naming the role of each inherited socket
/// (`public:N`, `admin`, `redirect`). A new name for roles an older
/// binary would misread (it took every name but `admin` for its one
/// public listener): such a binary finds no sockets, fails with "address
/// in use", and the process that started it goes on serving.
const SOCKETS: &str = "WSGATE_SOCKETS";
/// The name older versions used (all `public` but `admin`), still read.
const LISTENERS: &str = "WSGATE_LISTENERS";
/// The environment variable holding the PID of the process to replace.
const FROM: &str = "WSGATE_UPGRADE_FROM";

/// The sockets this process listens on, kept to hand over.
#[derive(Debug)]
pub(crate) struct Handover {
    /// The binary and arguments this process was started with.
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
    /// Each public listener's sockets, one per worker.
    public: Vec<Vec<TcpListener>>,
    admin: Option<TcpListener>,
    redirect: Option<TcpListener>,
}

/// Sockets handed over by an older process.
#[derive(Debug)]
pub(crate) struct Inherited {
    /// The public listeners, in order, each with its sockets (one per
    /// worker of the older process).
    pub(crate) public: Vec<Vec<TcpListener>>,
    /// The admin listener, if it had one.
    pub(crate) admin: Option<TcpListener>,
    /// The listener redirecting to https, if it had one.
    pub(crate) redirect: Option<TcpListener>,
    /// The older process, to stop once this one serves.
    pub(crate) from: u32,
}

impl Handover {
    /// What to start again: this binary (its path now, so that a binary
    /// replaced at that path is the one started) with these arguments.
    pub(crate) fn new() -> std::io::Result<Self> {
        // The path it was started by (a symlink switched to a new release
        // is followed then, not now), made absolute; else the running one.
        let exe = match std::env::args_os().next().map(PathBuf::from) {
            Some(path) if path.components().count() > 1 => std::path::absolute(path)?,
            _ => std::env::current_exe()?,
        };
        Ok(Self {
            exe,
            args: std::env::args_os().skip(1).collect(),
            public: Vec::new(),
            admin: None,
            redirect: None,
        })
    }

    /// Keep a descriptor of each socket of each public listener.
    pub(crate) fn public(&mut self, listeners: &[Vec<TcpListener>]) -> std::io::Result<()> {
        for sockets in listeners {
            let kept = sockets
                .iter()
                .map(TcpListener::try_clone)
                .collect::<std::io::Result<_>>()?;
            self.public.push(kept);
        }
        Ok(())
    }

    /// Keep a descriptor of the admin listener.
    pub(crate) fn admin(&mut self, listener: &TcpListener) -> std::io::Result<()> {
        self.admin = Some(listener.try_clone()?);
        Ok(())
    }

    /// Keep a descriptor of the listener redirecting to https.
    pub(crate) fn redirect(&mut self, listener: &TcpListener) -> std::io::Result<()> {
        self.redirect = Some(listener.try_clone()?);
        Ok(())
    }

    /// Start the new process with the sockets; its PID and handle.
    pub(crate) fn start(&self) -> std::io::Result<std::process::Child> {
        let mut sockets: Vec<(String, OwnedFd)> = Vec::new();
        for (index, listener) in self.public.iter().enumerate() {
            for socket in listener {
                sockets.push((
                    format!("public:{index}"),
                    OwnedFd::from(socket.try_clone()?),
                ));
            }
        }
        if let Some(admin) = &self.admin {
            sockets.push(("admin".to_owned(), OwnedFd::from(admin.try_clone()?)));
        }
        if let Some(redirect) = &self.redirect {
            sockets.push(("redirect".to_owned(), OwnedFd::from(redirect.try_clone()?)));
        }
        let names: Vec<String> = sockets.iter().map(|(name, _)| name.clone()).collect();
        let mappings = sockets
            .into_iter()
            .enumerate()
            .map(|(i, (_, fd))| FdMapping {
                parent_fd: fd,
                child_fd: 3 + i as i32,
            })
            .collect();
        Command::new(&self.exe)
            .args(&self.args)
            .env("LISTEN_FDS", names.len().to_string())
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS_FIRST_FD")
            .env(SOCKETS, names.join(","))
            .env_remove(LISTENERS)
            .env(FROM, std::process::id().to_string())
            .fd_mappings(mappings)
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .spawn()
    }
}

impl Inherited {
    /// The sockets an older process handed over, if this process was
    /// started by one.
    pub(crate) fn take() -> std::io::Result<Option<Self>> {
        let names = std::env::var(SOCKETS).or_else(|_| std::env::var(LISTENERS));
        let (Ok(names), Ok(from)) = (names, std::env::var(FROM)) else {
            return Ok(None);
        };
        // SAFETY of the environment: read once, at start-up, before any
        // thread is started.
        let from: u32 = from
            .parse()
            .map_err(|_| std::io::Error::other(format!("{FROM}={from}: not a PID")))?;
        let mut fds = listenfd::ListenFd::from_env();
        let mut public: Vec<Vec<TcpListener>> = Vec::new();
        let mut admin = None;
        let mut redirect = None;
        for (index, name) in names.split(',').enumerate() {
            let listener = fds.take_tcp_listener(index)?.ok_or_else(|| {
                std::io::Error::other(format!("socket {index} ({name}) was not handed over"))
            })?;
            listener.set_nonblocking(true)?;
            match name {
                "admin" => admin = Some(listener),
                "redirect" => redirect = Some(listener),
                // `public` alone: from a version with one listener.
                _ => {
                    let index = match name.strip_prefix("public:") {
                        Some(index) => index.parse().map_err(|_| {
                            std::io::Error::other(format!(
                                "socket {index} has an unknown role {name}"
                            ))
                        })?,
                        None => 0,
                    };
                    if public.len() <= index {
                        public.resize_with(index + 1, Vec::new);
                    }
                    public[index].push(listener);
                }
            }
        }
        if public.is_empty() || public.iter().any(Vec::is_empty) {
            return Err(std::io::Error::other("no public listener was handed over"));
        }
        if public
            .iter()
            .any(|sockets| sockets.len() != public[0].len())
        {
            return Err(std::io::Error::other(
                "the public listeners were handed over with different socket counts",
            ));
        }
        Ok(Some(Self {
            public,
            admin,
            redirect,
            from,
        }))
    }
}

/// Tell the older process to stop accepting and drain (SIGTERM), if it
/// is still this process's parent (a PID from the environment could have
/// been recycled).
pub(crate) fn retire(pid: u32) -> std::io::Result<()> {
    let pid = nix::unistd::Pid::from_raw(
        i32::try_from(pid).map_err(|_| std::io::Error::other("PID out of range"))?,
    );
    if nix::unistd::getppid() != pid {
        return Err(std::io::Error::other(
            "it is not this process's parent any more",
        ));
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
}
