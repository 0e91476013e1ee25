//! # cache-testkit
//!
//! Test support for tiercache (not published): real `redis-server` processes on free
//! `127.0.0.1` ports, each in its own temporary directory, with fault injection.
//!
//! - [`RedisServer::start`] starts a private server (`--save "" --appendonly no`), waits until
//!   it answers `PING` and kills it on `Drop`. [`ServerOptions`] adds server arguments
//!   (`--requirepass`, ACL users, anything else).
//! - [`shared_redis`] is one server per test binary, for tests that do not break it.
//! - Faults: [`RedisServer::stop`] (`SIGSTOP`, a hung server), [`RedisServer::cont`]
//!   (`SIGCONT`), [`RedisServer::kill`] (`SIGKILL`) and [`RedisServer::restart`] (start again
//!   on the same port, for "Redis comes back" tests).
//!
//! Every server is spawned from one dedicated, never-exiting thread with
//! `prctl(PR_SET_PDEATHSIG, SIGKILL)` (Linux), so servers die with the test process even when
//! they live in a `static` (never dropped) or the test process is killed.
//!
//! - [`RedisCluster::start`] starts a real Redis Cluster: 6 nodes (3 primaries, 3 replicas)
//!   joined with `redis-cli --cluster create`, healthy in about 3 s, with node control
//!   (kill, `SIGSTOP`, restart, `CLUSTER FAILOVER`); [`shared_cluster`] is one per test
//!   binary. See the [`cluster`] module.
//! - [`FaultProxy`] is a TCP proxy in front of a server whose [`Mode`] (pass, delay,
//!   blackhole, reset) can be switched while a test runs, with a count of accepted
//!   connections (to bound reconnect attempts). See the [`proxy`] module.
//!
//! A missing `redis-server` binary is an error whose message carries the install command
//! ([`INSTALL_HINT`]); tests must fail on it, never skip.
//!
//! ```no_run
//! # fn main() -> Result<(), cache_testkit::Error> {
//! use cache_testkit::{RedisServer, ServerOptions};
//!
//! let server = RedisServer::start()?;
//! assert_eq!(server.cli(&["SET", "k", "v"])?.trim(), "OK");
//!
//! let locked = ServerOptions::new().requirepass("s3cret").start()?;
//! println!("{}", locked.url()); // redis://127.0.0.1:PORT/ (no password in it)
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod cluster;
pub mod proxy;
pub mod sentinel;

pub use cluster::{shared_cluster, ClusterNode, ClusterOptions, RedisCluster, Role, SlotMigration};
pub use proxy::{FaultProxy, Mode};
pub use sentinel::{shared_sentinel, RedisSentinel, SentinelOptions};

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The command that installs the Redis binaries these tests need (Debian / Ubuntu).
pub const INSTALL_HINT: &str = "apt-get install -y redis-server redis-tools";

/// How long [`RedisServer::start`] waits for a new server to answer `PING` by default.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`RedisServer::cli`] lets `redis-cli` run before killing it.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong while starting or driving a test server.
///
/// `Debug` prints the message as is, so a failing test shows it readably.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// A TCP port on `127.0.0.1` that was free a moment ago (bind to port 0, read it, release it).
///
/// Another process may take it before you do; [`RedisServer::start`] retries with a new port
/// when that happens.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::new(format!("cannot bind a free port on 127.0.0.1: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::new(format!("cannot read the bound port: {e}")))?
        .port();
    Ok(port)
}

/// The path of `name` on `PATH`, or an error that says how to install it.
pub fn find_binary(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(Error::new(format!(
        "`{name}` was not found on PATH; the Redis integration tests need a real Redis 7 \
         server. Install it with: {INSTALL_HINT}"
    )))
}

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
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Append raw `redis-server` arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Require `password` for the `default` user (`--requirepass`). [`RedisServer::cli`]
    /// then authenticates with it.
    pub fn requirepass(mut self, password: impl Into<String>) -> Self {
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
    pub fn acl_user(mut self, rule: &str) -> Self {
        self.args.push("--user".to_owned());
        self.args.extend(rule.split_whitespace().map(str::to_owned));
        self
    }

    /// The credentials [`RedisServer::cli`] uses (`--user` / `--pass`); `user = None` means
    /// the `default` user.
    pub fn cli_auth(mut self, user: Option<&str>, password: impl Into<String>) -> Self {
        self.cli_auth = Some((user.map(str::to_owned), password.into()));
        self
    }

    /// How long to wait for the server to answer `PING` (default
    /// [`DEFAULT_STARTUP_TIMEOUT`]).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = Some(timeout);
        self
    }

    /// Also serve TLS on another free port (see [`RedisServer::tls_port`]) with `certs`; the
    /// plain port stays open (readiness checks and [`RedisServer::cli`] use it). Clients are
    /// not asked for certificates.
    pub fn tls(mut self, certs: &TestCerts) -> Result<Self> {
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

    /// Like [`ServerOptions::tls`], but the TLS port requires a client certificate signed by
    /// the CA of `certs` (`tls-auth-clients yes`, mutual TLS): a client without one is refused
    /// during the handshake. [`TestCerts::client_cert`] / [`TestCerts::client_key`] are
    /// accepted.
    pub fn tls_requiring_client_certs(self, certs: &TestCerts) -> Result<Self> {
        let mut options = self.tls(certs)?;
        if let Some(last) = options.args.last_mut() {
            "yes".clone_into(last);
        }
        Ok(options)
    }

    /// Read this config file first (`redis-server FILE ...`: Redis takes a config file only
    /// as its first argument). Sentinels need one: they rewrite it with what they learn.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// The log line that tells the server is up (default "Ready to accept connections"; a
    /// sentinel logs "+monitor master" instead). Only a new one counts, as for the default.
    pub fn ready_line(mut self, line: impl Into<String>) -> Self {
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

    /// The TLS port, when started with [`ServerOptions::tls`].
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

/// A throwaway certificate authority, a server certificate it signed (for `localhost` and
/// `127.0.0.1`) and a client certificate it signed (for mutual TLS), made with the `openssl`
/// command in a temp dir, for TLS tests.
pub struct TestCerts {
    dir: tempfile::TempDir,
    /// The CA certificate (PEM): what clients must trust.
    pub ca_cert: PathBuf,
    /// The server certificate (PEM), valid for `localhost` and `127.0.0.1`.
    pub server_cert: PathBuf,
    /// The server's private key (PEM).
    pub server_key: PathBuf,
    /// A client certificate (PEM, `CN=tiercache test client`, extended key usage
    /// `clientAuth`) signed by the same CA: what a server with `tls-auth-clients yes`
    /// accepts.
    pub client_cert: PathBuf,
    /// The client certificate's private key (PEM, PKCS#8).
    pub client_key: PathBuf,
}

impl fmt::Debug for TestCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCerts")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl TestCerts {
    /// Generate a CA (P-256) and a server certificate signed by it, valid for two days, for
    /// `localhost` and `127.0.0.1`.
    pub fn generate() -> Result<TestCerts> {
        Self::generate_with_san("DNS:localhost,IP:127.0.0.1")
    }

    /// Like [`TestCerts::generate`], with the server certificate valid only for the names in
    /// `subject_alt_names` (OpenSSL syntax, e.g. `"DNS:elsewhere.invalid"`): for "wrong host
    /// name" tests.
    pub fn generate_with_san(subject_alt_names: &str) -> Result<TestCerts> {
        let openssl = find_binary("openssl").map_err(|_| {
            Error::new(
                "`openssl` was not found on PATH; install it with: apt-get install -y openssl",
            )
        })?;
        let dir = tempfile::Builder::new()
            .prefix("tiercache-certs-")
            .tempdir()
            .map_err(|e| Error::new(format!("cannot create a temp dir for certificates: {e}")))?;
        let p = |name: &str| dir.path().join(name);
        let s = |path: &Path| path.to_string_lossy().into_owned();
        std::fs::write(
            p("server.ext"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName={subject_alt_names}\n"
            ),
        )
        .map_err(|e| Error::new(format!("cannot write server.ext: {e}")))?;
        std::fs::write(
            p("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=clientAuth\n",
        )
        .map_err(|e| Error::new(format!("cannot write client.ext: {e}")))?;
        let (ca_key, ca_pem) = (s(&p("ca.key")), s(&p("ca.pem")));
        let (key, csr, pem, ext) = (
            s(&p("server.key")),
            s(&p("server.csr")),
            s(&p("server.pem")),
            s(&p("server.ext")),
        );
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca_ext = [
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new(&openssl)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| Error::new(format!("cannot run openssl: {e}")))?;
            if out.status.success() {
                return Ok(());
            }
            Err(Error::new(format!(
                "openssl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )))
        };
        let subj_ca = "/CN=tiercache test CA";
        run(&[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", &ca_key, "-out", &ca_pem],
            &["-days", "2", "-subj", subj_ca],
            &ca_ext,
        ]
        .concat())?;
        run(&[
            &["req"][..],
            &ec,
            &["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"],
        ]
        .concat())?;
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ])?;
        let (client_key, client_csr, client_pem, client_ext) = (
            s(&p("client.key")),
            s(&p("client.csr")),
            s(&p("client.pem")),
            s(&p("client.ext")),
        );
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &client_key,
                "-out",
                &client_csr,
                "-subj",
                "/CN=tiercache test client",
            ],
        ]
        .concat())?;
        run(&[
            "x509",
            "-req",
            "-in",
            &client_csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &client_pem,
            "-days",
            "2",
            "-extfile",
            &client_ext,
        ])?;
        Ok(TestCerts {
            ca_cert: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            dir,
        })
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

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A request to the spawner thread.
struct SpawnRequest {
    program: PathBuf,
    args: Vec<String>,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// Spawn `program args...` from the dedicated spawner thread.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process,
/// so every server is forked by one thread that never exits: the signal then fires exactly
/// when the test process dies, however it dies.
fn spawn_process(program: &Path, args: &[String]) -> Result<Child> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER
        .get_or_init(start_spawner)
        .as_ref()
        .map_err(Clone::clone)?;
    let (reply, answer) = mpsc::channel();
    sender
        .send(SpawnRequest {
            program: program.to_path_buf(),
            args: args.to_vec(),
            reply,
        })
        .map_err(|_| Error::new("the redis-server spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| Error::new("the redis-server spawner thread did not answer"))?
        .map_err(|e| Error::new(format!("cannot start {}: {e}", program.display())))
}

fn start_spawner() -> Result<mpsc::Sender<SpawnRequest>> {
    let (sender, requests) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("cache-testkit-spawner".to_owned())
        .spawn(move || {
            // The sender lives in a static, so this loop ends only with the process. If it
            // ever did end, the thread must still not exit (that would kill every server).
            while let Ok(request) = requests.recv() {
                let mut cmd = Command::new(&request.program);
                cmd.args(&request.args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                sys::kill_with_parent(&mut cmd);
                let _ = request.reply.send(cmd.spawn());
            }
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| Error::new(format!("cannot start the spawner thread: {e}")))?;
    Ok(sender)
}

/// The few system calls this crate needs.
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::process::Command;

    pub const SIGSTOP: i32 = libc::SIGSTOP;
    pub const SIGCONT: i32 = libc::SIGCONT;

    /// Send `signal` to `pid`.
    pub fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
        let pid = libc::pid_t::try_from(pid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
        // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Make the child get `SIGKILL` when the thread that spawned it exits.
    #[cfg(target_os = "linux")]
    pub fn kill_with_parent(cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child between fork and exec. It only calls
        // prctl(2) and getppid(2), which are async-signal-safe, and allocates nothing and
        // takes no locks (io::Error::last_os_error only reads errno; from_raw_os_error does
        // not allocate).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then nobody would kill us.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }

    /// Not Linux: no parent-death signal; servers are still killed on `Drop`.
    #[cfg(not(target_os = "linux"))]
    pub fn kill_with_parent(_cmd: &mut Command) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() -> Result<()> {
        let port = free_port()?;
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .map_err(|e| Error::new(format!("port {port} was not free: {e}")))?;
        Ok(())
    }

    #[test]
    fn missing_binary_names_the_install_command() {
        let err = find_binary("redis-server-that-does-not-exist").err();
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(INSTALL_HINT), "{message}");
    }

    #[test]
    fn options_debug_hides_arguments() {
        let options = ServerOptions::new().requirepass("hunter2");
        assert!(!format!("{options:?}").contains("hunter2"));
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
