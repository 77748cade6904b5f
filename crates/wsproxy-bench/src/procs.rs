//! Child processes of the benchmark (echo backend, gateway, nginx,
//! HAProxy, profilers) and their CPU time and memory, read from `/proc`.
//! Debian packages the benchmark needs are installed when missing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (by its PID, which we started) and reaped on drop.
#[derive(Debug)]
pub(crate) struct Proc {
    /// What it is, for messages.
    pub(crate) name: &'static str,
    child: Child,
    /// Signal that stops the process and its children gracefully
    /// (nginx: `QUIT`); without one the process is killed.
    quit: Option<&'static str>,
    /// Whether [`stop`](Self::stop) ran.
    stopped: bool,
}

impl Proc {
    /// Spawn `command`, and read the first stdout line that ends in a
    /// socket address after `marker` (e.g. `listening on `), waiting at
    /// most 10 s.
    pub(crate) fn spawn_announcing(
        name: &'static str,
        command: &mut Command,
        marker: &str,
    ) -> Result<(Self, String), Box<dyn std::error::Error>> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let proc = Proc {
            name,
            child,
            quit: None,
            stopped: false,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| format!("{name} did not announce its address within 10 s"))?;
        let addr = line
            .trim()
            .split_once(marker)
            .map(|(_, addr)| addr.to_owned())
            .ok_or_else(|| format!("{name} printed {line:?} instead of its address"))?;
        Ok((proc, addr))
    }

    /// This benchmark's echo backend (`wsproxy-bench echo`) on a free
    /// loopback port, and its address.
    pub(crate) fn echo_backend() -> Result<(Self, String), Box<dyn std::error::Error>> {
        Self::spawn_announcing(
            "echo backend",
            Command::new(std::env::current_exe()?).args(["echo", "--listen", "127.0.0.1:0"]),
            "listening on ",
        )
    }

    /// Spawn `command` that does not announce itself.
    pub(crate) fn spawn(
        name: &'static str,
        command: &mut Command,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Proc {
            name,
            child,
            quit: None,
            stopped: false,
        })
    }

    /// [`spawn`](Self::spawn), stopped with `signal` (e.g. nginx's
    /// `QUIT`) before it is killed.
    pub(crate) fn spawn_quitting(
        name: &'static str,
        command: &mut Command,
        signal: &'static str,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let mut proc = Self::spawn(name, command)?;
        proc.quit = Some(signal);
        Ok(proc)
    }

    /// The process ID.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The PID and the PIDs of its direct children (nginx workers).
    pub(crate) fn family(&self) -> Vec<u32> {
        let pid = self.pid();
        let mut pids = vec![pid];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(child) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if stat_fields(child).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
                    == Some(pid)
                {
                    pids.push(child);
                }
            }
        }
        pids
    }

    /// CPU seconds (user + system) used by the process and its children.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        let ticks: u64 = self
            .family()
            .into_iter()
            .filter_map(stat_fields)
            .map(|f| cpu_ticks(&f))
            .sum();
        ticks as f64 / clock_ticks()
    }

    /// CPU seconds in user space used by the process and its children.
    pub(crate) fn user_cpu_seconds(&self) -> f64 {
        let ticks: u64 = self
            .family()
            .into_iter()
            .filter_map(stat_fields)
            .filter_map(|f| f.get(11).and_then(|v| v.parse::<u64>().ok()))
            .sum();
        ticks as f64 / clock_ticks()
    }

    /// CPU seconds (user + system) of each thread of the process (not its
    /// children), by thread ID.
    pub(crate) fn thread_cpu_seconds(&self) -> BTreeMap<u32, f64> {
        thread_cpu_seconds(self.pid())
    }

    /// Resident memory in KiB of the process and its children.
    pub(crate) fn rss_kib(&self) -> u64 {
        self.family()
            .into_iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .sum()
    }

    /// Whether the process has ended (e.g. a profiler that could not
    /// attach).
    pub(crate) fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Stop the process as [`Drop`] does, but give its quit signal
    /// `grace` instead of 3 s (a profiler writing its report).
    pub(crate) fn stop_within(mut self, grace: Duration) {
        self.stop(grace);
    }

    /// Send the quit signal, if any, and wait up to `grace` for the
    /// process to end; then kill it and what is left of its children.
    /// Does nothing the second time.
    fn stop(&mut self, grace: Duration) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Ok(Some(status)) = self.child.try_wait() {
            eprintln!("{} exited early: {status}", self.name);
            return;
        }
        // Every PID here is one we started: the process and its children.
        let family = self.family();
        if let Some(signal) = self.quit {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(self.pid().to_string())
                .status();
            let start = Instant::now();
            while start.elapsed() < grace {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in family.into_iter().skip(1) {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Fields of `/proc/PID/stat` after the `(comm)` field.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    stat_fields_at(&format!("/proc/{pid}/stat"))
}

/// Fields of a `stat` file after the `(comm)` field.
fn stat_fields_at(path: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// User + system clock ticks in `stat` fields.
fn cpu_ticks(fields: &[String]) -> u64 {
    // After the command name: state is [0], utime [11], stime [12].
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

/// CPU seconds (user + system) of each thread of `pid`, by thread ID.
fn thread_cpu_seconds(pid: u32) -> BTreeMap<u32, f64> {
    let ticks = clock_ticks();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let tid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let fields = stat_fields_at(&format!("/proc/{pid}/task/{tid}/stat"))?;
            Some((tid, cpu_ticks(&fields) as f64 / ticks))
        })
        .collect()
}

/// CPU seconds (user + system) this process (the load generator) used.
pub(crate) fn own_cpu_seconds() -> f64 {
    stat_fields_at("/proc/self/stat").map_or(0.0, |f| cpu_ticks(&f) as f64 / clock_ticks())
}

/// Clock ticks per second (`getconf CLK_TCK`, asked once).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Wait until `addr` accepts TCP connections, for at most 10 s.
pub(crate) fn wait_listening(addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listens on {addr} after 10 s").into())
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Where the Debian package `name` installed its binary of that name,
/// installing the package first when it is missing.
pub(crate) fn installed(name: &str) -> Result<PathBuf, String> {
    installed_from(name, name)
}

/// Where the Debian package `package` installed `binary`. A missing
/// package is installed with `apt-get install -y -qq` (after an `apt-get
/// update` if that fails, as it does without package lists).
pub(crate) fn installed_from(binary: &str, package: &str) -> Result<PathBuf, String> {
    let find = || {
        ["/usr/sbin", "/usr/bin"]
            .into_iter()
            .map(|dir| Path::new(dir).join(binary))
            .find(|path| path.exists())
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    eprintln!("{binary} is missing: apt-get install -y -qq {package}");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !apt(&["install", "-y", "-qq", package]) {
        apt(&["update", "-qq"]);
        apt(&["install", "-y", "-qq", package]);
    }
    find().ok_or_else(|| format!("{binary} is not installed and apt-get install {package} failed"))
}

/// `program` run by `sh` with its open file limit at `nofile`, soft and
/// hard, as `ulimit -n` sets them (the shell then `exec`s it: same PID).
pub(crate) fn with_nofile(nofile: u64, program: &Path) -> Command {
    let mut command = Command::new("sh");
    command
        .args(["-c", &format!("ulimit -n {nofile} && exec \"$0\" \"$@\"")])
        .arg(program);
    command
}

/// The open file limit (soft) of this process, which the processes it
/// starts inherit; `main` raised it to the hard limit.
pub(crate) fn nofile_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Start nginx from Debian in `dir`, configured as an expert would for
/// WebSockets, proxying 127.0.0.1:`port` to the echo backend. With
/// `buffer`, `proxy_buffer_size` (the buffer of each direction of an
/// upgraded connection; one page by default) is set to it.
pub(crate) fn start_nginx(
    dir: &Path,
    port: u16,
    backend: &str,
    buffer: Option<&str>,
) -> Result<Proc, Box<dyn std::error::Error>> {
    // nginx insists that the busy buffers fit in the buffers, so those
    // follow the size too (with `proxy_buffering off` they are not used).
    let buffer = buffer.map_or_else(String::new, |size| {
        format!("proxy_buffer_size {size}; proxy_buffers 4 {size}; proxy_busy_buffers_size {size};")
    });
    let nginx = installed("nginx")?;
    std::fs::create_dir_all(dir.join("logs"))?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let config = format!(
        r#"worker_processes {workers};
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    tcp_nodelay on;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream echo {{ server {backend}; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_buffering off;
            {buffer}
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"#,
        dir = dir.display()
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config)?;
    let mut proc = Proc::spawn(
        "nginx",
        Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"]),
    )?;
    proc.quit = Some("QUIT");
    wait_listening(&format!("127.0.0.1:{port}"))?;
    Ok(proc)
}

/// The flags that turn wsgate's access log off, as nginx's `access_log
/// off` in the configurations here: `--no-access-log` where the binary
/// has it (builds before it followed `RUST_LOG=warn` alone, which every
/// target sets).
pub(crate) fn quiet_gateway(binary: &Path) -> &'static [&'static str] {
    static CACHE: std::sync::Mutex<Vec<(PathBuf, bool)>> = std::sync::Mutex::new(Vec::new());
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let has = match cache.iter().find(|(path, _)| path == binary) {
        Some((_, has)) => *has,
        None => {
            let has = Command::new(binary)
                .arg("--help")
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("--no-access-log"));
            cache.push((binary.to_owned(), has));
            has
        }
    };
    if has { &["--no-access-log"] } else { &[] }
}

/// An nginx configuration for running in `dir` (pid, logs and temporary
/// files there), one worker per core, no access log, `tcp_nodelay`, with
/// `http` holding the rest of the `http` block.
pub(crate) fn nginx_config(dir: &Path, http: &str) -> String {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    format!(
        "worker_processes {workers};\nworker_rlimit_nofile 19000;\n\
         pid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log warn;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n access_log off;\n client_body_temp_path {dir}/body;\n\
         proxy_temp_path {dir}/proxy;\n fastcgi_temp_path {dir}/fastcgi;\n\
         uwsgi_temp_path {dir}/uwsgi;\n scgi_temp_path {dir}/scgi;\n tcp_nodelay on;\n\
         {http}\n}}\n",
        dir = dir.display()
    )
}

/// Debian's nginx on the configuration file `conf`, running in `dir`,
/// stopped with `QUIT`.
pub(crate) fn spawn_nginx(dir: &Path, conf: &Path) -> Result<Proc, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir.join("logs"))?;
    Proc::spawn_quitting(
        "nginx",
        Command::new(installed("nginx")?)
            .arg("-g")
            .arg("daemon off;")
            .arg("-c")
            .arg(conf)
            .arg("-p")
            .arg(dir),
        "QUIT",
    )
}

/// HAProxy from Debian configured for WebSockets in `mode http`, proxying
/// 127.0.0.1:`port` to `backend`: `nbthread` one per core, the timeouts
/// its documentation recommends (`timeout http-request 10s`, `timeout
/// client 1m`, `timeout tunnel 3600s`), no `log` line (so no access log,
/// as nginx's `access_log off`). With `maxconn` it is set globally and on
/// the frontend (HAProxy needs about two descriptors per connection and
/// refuses to start without them); without, HAProxy derives it from the
/// descriptor limit. With `nofile` HAProxy runs under that open file limit
/// (soft and hard), else under this process's.
pub(crate) fn start_haproxy(
    dir: &Path,
    port: u16,
    backend: &str,
    maxconn: Option<u64>,
    nofile: Option<u64>,
) -> Result<Proc, Box<dyn std::error::Error>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (global_maxconn, frontend_maxconn) = maxconn.map_or_else(Default::default, |n| {
        (format!("    maxconn {n}\n"), format!("    maxconn {n}\n"))
    });
    let config = format!(
        r#"global
    nbthread {threads}
{global_maxconn}defaults
    mode http
    timeout connect 5s
    timeout client 1m
    timeout server 1m
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout tunnel 3600s
frontend fe
    bind 127.0.0.1:{port}
{frontend_maxconn}    default_backend be
backend be
    server echo {backend}
"#
    );
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("haproxy.cfg");
    std::fs::write(&conf, config)?;
    let haproxy = installed("haproxy")?;
    let mut command = match nofile {
        Some(nofile) => with_nofile(nofile, &haproxy),
        None => Command::new(&haproxy),
    };
    command.arg("-db").arg("-f").arg(&conf);
    let mut proc = Proc::spawn("haproxy", &mut command)?;
    if let Err(e) = wait_listening(&format!("127.0.0.1:{port}")) {
        if proc.has_exited() {
            return Err(format!(
                "haproxy exited at start (`haproxy -db -f {}` says why)",
                conf.display()
            )
            .into());
        }
        return Err(e);
    }
    Ok(proc)
}
