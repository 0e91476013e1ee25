//! A private `redis-server` process ([`RedisServer`]), its options and the shared one.

use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::certs::TestCerts;
use crate::error::{Error, Result};
use crate::process::{drain, find_binary, free_port, spawn_process, tail};
use crate::sys;

/// How long [`RedisServer::start`] waits for a new server to answer `PING` by default.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`RedisServer::cli`] lets `redis-cli` run before killing it.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// Extra arguments and settings for a test server. Build with the methods, then
/// [`ServerOptions::start`].
#[derive(Clone, Default)]
pub struct ServerOptions {
    args: Vec<String>,
    cli_auth: Option<(Option<String>, String)>,
    startup_timeout: Option<Duration>,
    tls_port: Option<u16>,
    config_file: Option<PathBuf>,
    ready_line: Option<String>,
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Arguments may carry passwords; show only how many there are.
        f.debug_struct("ServerOptions")
            .field("args", &self.args.len())
            .field("cli_auth", &self.cli_auth.as_ref().map(|_| "<set>"))
            .field("startup_timeout", &self.startup_timeout)
            .field("tls_port", &self.tls_port)
            .field("config_file", &self.config_file)
            .finish()
    }
}

impl ServerOptions {
    /// No extra arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append one raw `redis-server` argument (`"--maxmemory"`, `"10mb"`, ...).
    pub fn with_arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Append raw `redis-server` arguments.
    pub fn with_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Require `password` for the `default` user (`--requirepass`). [`RedisServer::cli`]
    /// then authenticates with it.
    pub fn with_requirepass(mut self, password: impl Into<String>) -> Self {
        let password = password.into();
        self.args.push("--requirepass".to_owned());
        self.args.push(password.clone());
        if self.cli_auth.is_none() {
            self.cli_auth = Some((None, password));
        }
        self
    }

    /// Add an ACL user from a rule line, as in `redis.conf`'s `user` directive, for example
    /// `"alice on >s3cret ~* &* +@all"`. The line is split on whitespace (each word becomes
    /// one argument), so passwords in it cannot contain spaces.
    pub fn with_acl_user(mut self, rule: &str) -> Self {
        self.args.push("--user".to_owned());
        self.args.extend(rule.split_whitespace().map(str::to_owned));
        self
    }

    /// The credentials [`RedisServer::cli`] uses (`--user` / `--pass`); `user = None` means
    /// the `default` user.
    pub fn with_cli_auth(mut self, user: Option<&str>, password: impl Into<String>) -> Self {
        self.cli_auth = Some((user.map(str::to_owned), password.into()));
        self
    }

    /// How long to wait for the server to answer `PING` (default
    /// [`DEFAULT_STARTUP_TIMEOUT`]).
    pub fn with_startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = Some(timeout);
        self
    }

    /// Also serve TLS on another free port (see [`RedisServer::tls_port`]) with `certs`; the
    /// plain port stays open (readiness checks and [`RedisServer::cli`] use it). Clients are
    /// not asked for certificates.
    pub fn with_tls(mut self, certs: &TestCerts) -> Result<Self> {
        let port = free_port()?;
        self.tls_port = Some(port);
        let path = |p: &Path| p.to_string_lossy().into_owned();
        self.args.extend([
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            path(&certs.server_cert),
            "--tls-key-file".to_owned(),
            path(&certs.server_key),
            "--tls-ca-cert-file".to_owned(),
            path(&certs.ca_cert),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ]);
        Ok(self)
    }

    /// Like [`ServerOptions::with_tls`], but the TLS port requires a client certificate signed by
    /// the CA of `certs` (`tls-auth-clients yes`, mutual TLS): a client without one is refused
    /// during the handshake. [`TestCerts::client_cert`] / [`TestCerts::client_key`] are
    /// accepted.
    pub fn tls_requiring_client_certs(self, certs: &TestCerts) -> Result<Self> {
        let mut options = self.with_tls(certs)?;
        if let Some(last) = options.args.last_mut() {
            "yes".clone_into(last);
        }
        Ok(options)
    }

    /// Read this config file first (`redis-server FILE ...`: Redis takes a config file only
    /// as its first argument). Sentinels need one: they rewrite it with what they learn.
    pub fn with_config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// The log line that tells the server is up (default "Ready to accept connections"; a
    /// sentinel logs "+monitor master" instead). Only a new one counts, as for the default.
    pub fn with_ready_line(mut self, line: impl Into<String>) -> Self {
        self.ready_line = Some(line.into());
        self
    }

    /// Start a server with these options on a free port.
    pub fn start(self) -> Result<RedisServer> {
        RedisServer::start_with(self)
    }
}

/// A running `redis-server` on `127.0.0.1`, private to its owner, killed on `Drop`.
///
/// Control methods take `&self`, so a shared (`static`) server can be driven too; prefer a
/// private server for anything destructive.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    binary: PathBuf,
    options: ServerOptions,
    state: Mutex<State>,
}

struct State {
    child: Option<Child>,
    pid: u32,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl RedisServer {
    /// Start a server with no extra arguments on a free port.
    pub fn start() -> Result<RedisServer> {
        Self::start_with(ServerOptions::default())
    }

    /// Start a server with `options` on a free port (retrying with another port when the
    /// chosen one was taken meanwhile).
    pub fn start_with(options: ServerOptions) -> Result<RedisServer> {
        let binary = find_binary("redis-server")?;
        Self::launch_on_free_port(&binary, "tiercache-redis-", |_| Ok(Some(options.clone())))
    }

    /// Start `binary` on a free port in a new temp dir named `dir_prefix…`, trying another
    /// port (5 attempts) when the chosen one was taken meanwhile. `options(port)` gives the
    /// server's options for that port, or `None` to pick another port.
    pub(crate) fn launch_on_free_port(
        binary: &Path,
        dir_prefix: &str,
        mut options: impl FnMut(u16) -> Result<Option<ServerOptions>>,
    ) -> Result<RedisServer> {
        let mut last_error = Error::new("redis-server was not started");
        for _attempt in 0..5 {
            let port = free_port()?;
            let Some(options) = options(port)? else {
                continue;
            };
            let dir = tempfile::Builder::new()
                .prefix(dir_prefix)
                .tempdir()
                .map_err(|e| Error::new(format!("cannot create a temp dir for Redis: {e}")))?;
            let server = RedisServer {
                port,
                dir,
                binary: binary.to_path_buf(),
                options,
                state: Mutex::new(State {
                    child: None,
                    pid: 0,
                }),
            };
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// The TCP port on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:PORT/` (never with credentials).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TLS port, when started with [`ServerOptions::with_tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.options.tls_port
    }

    /// The process id of the current (or, after [`RedisServer::kill`], the last) process.
    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    /// The server's working directory (its log is `redis.log` in it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far (empty if there is none yet).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the process is alive (stopped counts as alive).
    pub fn is_running(&self) -> bool {
        let mut state = self.lock();
        match state.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Freeze the server with `SIGSTOP`: connections stay open, nothing answers.
    pub fn stop(&self) -> Result<()> {
        self.signal(sys::SIGSTOP, "SIGSTOP")
    }

    /// Resume a frozen server with `SIGCONT`.
    pub fn cont(&self) -> Result<()> {
        self.signal(sys::SIGCONT, "SIGCONT")
    }

    /// Kill the server with `SIGKILL` and reap it. Killing a dead server is fine.
    pub fn kill(&self) -> Result<()> {
        let mut state = self.lock();
        if let Some(mut child) = state.child.take() {
            // An already exited process makes kill() fail; wait() still reaps it.
            let _ = child.kill();
            child
                .wait()
                .map_err(|e| Error::new(format!("cannot reap redis-server: {e}")))?;
        }
        Ok(())
    }

    /// Start the server again on the same port and directory (killing the current process
    /// first if it is still alive), and wait until it answers `PING`. The data set is empty
    /// afterwards (no persistence).
    pub fn restart(&self) -> Result<()> {
        self.kill()?;
        self.launch()
    }

    /// Run `redis-cli -p PORT ARGS...` (authenticating when the options say so) and return
    /// its standard output. Fails when `redis-cli` exits non-zero or runs longer than
    /// [`CLI_TIMEOUT`].
    pub fn cli<S: AsRef<str>>(&self, args: &[S]) -> Result<String> {
        let binary = find_binary("redis-cli")?;
        let mut cmd = Command::new(binary);
        cmd.arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string());
        if let Some((user, password)) = &self.options.cli_auth {
            if let Some(user) = user {
                cmd.arg("--user").arg(user);
            }
            cmd.arg("--pass").arg(password).arg("--no-auth-warning");
        }
        cmd.args(args.iter().map(AsRef::as_ref));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::new(format!("cannot run redis-cli: {e}")))?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let deadline = Instant::now() + CLI_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::new(format!(
                        "redis-cli on port {} did not finish within {CLI_TIMEOUT:?}",
                        self.port
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(Error::new(format!("cannot wait for redis-cli: {e}"))),
            }
        };
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(Error::new(format!(
                "redis-cli on port {} failed ({status}): {}{}",
                self.port,
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            )));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// How many times the server executed `command` since it started (or since
    /// `CONFIG RESETSTAT`), from `INFO commandstats`; 0 when it never ran.
    pub fn command_calls(&self, command: &str) -> Result<u64> {
        let info = self.cli(&["INFO", "commandstats"])?;
        let prefix = format!("cmdstat_{}:", command.to_ascii_lowercase());
        for line in info.lines() {
            if let Some(rest) = line.trim().strip_prefix(&prefix) {
                for field in rest.split(',') {
                    if let Some(calls) = field.strip_prefix("calls=") {
                        return calls
                            .parse()
                            .map_err(|e| Error::new(format!("bad calls field in `{line}`: {e}")));
                    }
                }
                return Err(Error::new(format!("no calls field in `{line}`")));
            }
        }
        Ok(0)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ready_line(&self) -> &str {
        self.options.ready_line.as_deref().unwrap_or(READY_LINE)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn signal(&self, signal: i32, name: &str) -> Result<()> {
        let state = self.lock();
        if state.child.is_none() {
            return Err(Error::new(format!(
                "cannot send {name}: redis-server on port {} is not running",
                self.port
            )));
        }
        sys::send_signal(state.pid, signal)
            .map_err(|e| Error::new(format!("cannot send {name} to pid {}: {e}", state.pid)))
    }

    fn command_line(&self) -> Vec<String> {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let config_file = self.options.config_file.iter();
        let mut args: Vec<String> = config_file
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        args.extend([
            "--port".to_owned(),
            self.port.to_string(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            "--save".to_owned(),
            String::new(),
            "--appendonly".to_owned(),
            "no".to_owned(),
            "--dir".to_owned(),
            dir,
            "--logfile".to_owned(),
            self.log_path().to_string_lossy().into_owned(),
            "--daemonize".to_owned(),
            "no".to_owned(),
        ]);
        args.extend(self.options.args.iter().cloned());
        args
    }

    /// Spawn the process (through the spawner thread) and wait for `PING`.
    fn launch(&self) -> Result<()> {
        // A restart appends to the same log: only a new "ready" line counts.
        let ready_before = self.log().matches(self.ready_line()).count();
        let child = spawn_process(&self.binary, &self.command_line())?;
        let pid = child.id();
        {
            let mut state = self.lock();
            state.child = Some(child);
            state.pid = pid;
        }
        let timeout = self
            .options
            .startup_timeout
            .unwrap_or(DEFAULT_STARTUP_TIMEOUT);
        match self.wait_ready(timeout, ready_before) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.kill();
                Err(e)
            }
        }
    }

    /// Wait until this process (not another server that holds the port: two tests starting
    /// servers at once can be handed the same free port) answers: a PING on the port, and a
    /// new "ready" line in this server's own log.
    fn wait_ready(&self, timeout: Duration, ready_before: usize) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut state = self.lock();
                if let Some(child) = state.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        state.child = None;
                        return Err(Error::new(format!(
                            "redis-server on port {} exited during startup ({status}); log:\n{}",
                            self.port,
                            tail(&self.log(), 20)
                        )));
                    }
                }
            }
            if ping(self.addr()) && self.log().matches(self.ready_line()).count() > ready_before {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(format!(
                    "redis-server on port {} did not answer PING within {timeout:?}; log:\n{}",
                    self.port,
                    tail(&self.log(), 20)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// One server per test binary, started on first use. It lives until the test process exits
/// (statics are never dropped; the parent-death signal kills it then).
///
/// Use it for tests that neither break the server nor depend on global counters; start a
/// private [`RedisServer`] for the others. The error is returned to every caller when the
/// first start failed.
pub fn shared_redis() -> Result<&'static RedisServer> {
    static SHARED: OnceLock<Result<RedisServer>> = OnceLock::new();
    match SHARED.get_or_init(RedisServer::start) {
        Ok(server) => Ok(server),
        Err(e) => Err(e.clone()),
    }
}

/// What redis-server logs once it listens (Redis 6 and 7).
const READY_LINE: &str = "Ready to accept connections";

/// Send `PING\r\n` over a plain TCP connection; any RESP reply (`+PONG`, or `-NOAUTH` on a
/// password-protected server) means the server is up.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) if n > 0 => matches!(buf[0], b'+' | b'-'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_debug_hides_arguments() {
        let options = ServerOptions::new().with_requirepass("hunter2");
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
