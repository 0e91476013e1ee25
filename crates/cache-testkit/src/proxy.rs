//! [`FaultProxy`]: a TCP proxy between a client and a server (a `redis-server`) whose
//! behaviour can be switched while it runs, to inject network faults into a test.
//!
//! - [`Mode::Pass`]: bytes flow both ways untouched.
//! - [`Mode::Delay`]: every chunk read is forwarded once it is `d` old (latency, not a
//!   bandwidth limit: chunks read back to back leave back to back).
//! - [`Mode::Blackhole`]: connections are accepted and read, nothing is forwarded and nothing
//!   answers; connections stay open. Like a partition, bytes are *held*, not dropped (a TCP
//!   stream never loses bytes in its middle): when the mode changes back to `Pass` or `Delay`
//!   they are delivered in order, as after a partition that healed before TCP gave up. Use
//!   [`FaultProxy::reset_all`] to model a partition that outlasted the connections.
//! - [`Mode::Reset`]: every open connection is closed with a TCP RST (`SO_LINGER` 0) at once,
//!   and every new one right after it is accepted.
//!
//! Plain `std` threads (two per connection plus the accept loop), no async runtime: the proxy
//! works under any test harness. Dropping the proxy stops accepting and resets every
//! connection it still carries.
//!
//! ```no_run
//! # fn main() -> Result<(), cache_testkit::Error> {
//! use std::time::Duration;
//! use cache_testkit::{FaultProxy, Mode, RedisServer};
//!
//! let server = RedisServer::start()?;
//! let proxy = FaultProxy::start(server.addr())?;
//! let url = proxy.url(); // give this to the client under test
//! proxy.set_mode(Mode::Delay(Duration::from_millis(200)));
//! proxy.reset_all(); // break every current connection once
//! assert!(proxy.connections_accepted() <= 10);
//! # let _ = url;
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often a pump thread wakes up to look at the mode and the reset flags; also the
/// longest a [`FaultProxy::reset_all`] takes to reach a connection.
const TICK: Duration = Duration::from_millis(10);

/// How long connecting to the upstream server may take before the client is reset.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes one direction of one connection may hold (blackholed or delayed) before the proxy
/// gives up on the connection and resets it.
pub const MAX_HELD_BYTES: usize = 256 * 1024 * 1024;

/// Size of one read.
const CHUNK: usize = 64 * 1024;

/// What the proxy does with the traffic. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything at once.
    Pass,
    /// Forward every chunk once this long has passed since it was read.
    Delay(Duration),
    /// Read but forward nothing and answer nothing; keep the connections open (bytes are
    /// held and delivered in order if the mode changes back).
    Blackhole,
    /// Reset (TCP RST) every connection, open or new.
    Reset,
}

/// A running fault-injection proxy on a free `127.0.0.1` port, in front of `upstream`.
/// Stopped (and its connections reset) on `Drop`.
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    upstream: SocketAddr,
    accept_thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .field("mode", &self.mode())
            .field("accepted", &self.connections_accepted())
            .field("open", &self.connections_open())
            .finish()
    }
}

/// State shared by the proxy handle, the accept thread and every pump thread.
struct Shared {
    mode: Mutex<Mode>,
    stopping: AtomicBool,
    accepted: AtomicU64,
    /// How many times [`FaultProxy::reset_all`] ran (a connection accepted before one and
    /// registered after it is reset too).
    resets: AtomicU64,
    connections: Mutex<Vec<Weak<Connection>>>,
}

impl Shared {
    fn mode(&self) -> Mode {
        *lock(&self.mode)
    }

    fn connections(&self) -> MutexGuard<'_, Vec<Weak<Connection>>> {
        lock(&self.connections)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One proxied connection: the client's socket and the upstream socket. Both sockets close
/// when the last pump thread lets go of it; after [`Connection::reset`] they close with RST.
struct Connection {
    client: TcpStream,
    upstream: TcpStream,
    /// Set by a reset (or the proxy stopping): the pumps stop and the sockets are dropped.
    reset: AtomicBool,
    /// Set when one direction ended on an error: the other direction stops too.
    broken: AtomicBool,
}

impl Connection {
    /// Arm both sockets for RST on close and tell the pumps to let go.
    fn reset(&self) {
        let _ = sys::linger_zero(&self.client);
        let _ = sys::linger_zero(&self.upstream);
        self.reset.store(true, Ordering::SeqCst);
    }

    fn should_stop(&self, shared: &Shared) -> bool {
        self.reset.load(Ordering::SeqCst)
            || self.broken.load(Ordering::SeqCst)
            || shared.stopping.load(Ordering::SeqCst)
    }
}

impl FaultProxy {
    /// Listen on a free `127.0.0.1` port and forward every accepted connection to `upstream`
    /// (connected when the client connects), in [`Mode::Pass`].
    pub fn start(upstream: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::new(format!("fault proxy: cannot bind 127.0.0.1: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::new(format!("fault proxy: cannot read the bound port: {e}")))?;
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            stopping: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            connections: Mutex::new(Vec::new()),
        });
        let accept_shared = shared.clone();
        let accept_thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || accept_loop(listener, upstream, accept_shared))
            .map_err(|e| Error::new(format!("fault proxy: cannot start its thread: {e}")))?;
        Ok(FaultProxy {
            shared,
            addr,
            upstream,
            accept_thread: Some(accept_thread),
        })
    }

    /// Switch the mode; it applies to every connection, open or new, within a few
    /// milliseconds. Switching to [`Mode::Reset`] resets every open connection.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
        if mode == Mode::Reset {
            self.reset_all();
        }
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Reset (TCP RST) every connection open now, once; the mode stays as it is, so new
    /// connections are served as before.
    pub fn reset_all(&self) {
        let mut connections = self.shared.connections();
        self.shared.resets.fetch_add(1, Ordering::SeqCst);
        for weak in connections.drain(..) {
            if let Some(connection) = weak.upgrade() {
                connection.reset();
            }
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `redis://127.0.0.1:PORT/` of the proxy (never with credentials).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.addr.port())
    }

    /// The server the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// How many connections the proxy has accepted since it started, including the ones it
    /// reset at once (to bound a client's reconnect attempts).
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// How many connections are open through the proxy now.
    pub fn connections_open(&self) -> usize {
        let mut connections = self.shared.connections();
        connections.retain(|weak| weak.strong_count() > 0);
        connections.len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.reset_all();
        // Wake the accept loop (blocked in accept) with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let client = match incoming {
            Ok(client) => client,
            // Transient accept failures (EMFILE, ECONNABORTED): try again shortly.
            Err(_) => {
                std::thread::sleep(TICK);
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let resets = shared.resets.load(Ordering::SeqCst);
        if shared.mode() == Mode::Reset {
            let _ = sys::linger_zero(&client);
            drop(client);
            continue;
        }
        let conn_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("fault-proxy-conn".to_owned())
            .spawn(move || serve(client, upstream, resets, conn_shared));
        if spawned.is_err() {
            // Out of threads: the client (dropped with the closure) sees its connection close.
            continue;
        }
    }
}

/// Connect upstream, register the connection and run its two directions.
fn serve(client: TcpStream, upstream: SocketAddr, resets: u64, shared: Arc<Shared>) {
    let upstream = match TcpStream::connect_timeout(&upstream, UPSTREAM_CONNECT_TIMEOUT) {
        Ok(stream) => stream,
        Err(_) => {
            let _ = sys::linger_zero(&client);
            return;
        }
    };
    for stream in [&client, &upstream] {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(TICK));
        let _ = stream.set_write_timeout(Some(TICK));
    }
    let connection = Arc::new(Connection {
        client,
        upstream,
        reset: AtomicBool::new(false),
        broken: AtomicBool::new(false),
    });
    {
        let mut connections = shared.connections();
        connections.retain(|weak| weak.strong_count() > 0);
        connections.push(Arc::downgrade(&connection));
        // A reset (mode or reset_all) may have happened between accept and now.
        if shared.mode() == Mode::Reset
            || shared.stopping.load(Ordering::SeqCst)
            || shared.resets.load(Ordering::SeqCst) != resets
        {
            connection.reset();
        }
    }
    let other = connection.clone();
    let other_shared = shared.clone();
    let upward = std::thread::Builder::new()
        .name("fault-proxy-up".to_owned())
        .spawn(move || pump(&other, Direction::Up, &other_shared));
    if upward.is_err() {
        connection.reset();
        return;
    }
    pump(&connection, Direction::Down, &shared);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// A chunk read and not yet (fully) written.
struct Held {
    due: Instant,
    bytes: Vec<u8>,
    written: usize,
}

/// Move bytes one way until EOF, an error, a reset or the proxy stopping.
fn pump(connection: &Connection, direction: Direction, shared: &Shared) {
    let (source, sink) = match direction {
        Direction::Up => (&connection.client, &connection.upstream),
        Direction::Down => (&connection.upstream, &connection.client),
    };
    let mut queue: VecDeque<Held> = VecDeque::new();
    let mut held_bytes = 0usize;
    let mut eof = false;
    let mut buf = vec![0u8; CHUNK];
    loop {
        if connection.should_stop(shared) {
            return;
        }
        let mode = shared.mode();
        // 1. Deliver what is due (nothing while blackholed).
        if mode != Mode::Blackhole {
            while let Some(front) = queue.front_mut() {
                if front.due > Instant::now() {
                    break;
                }
                match (&*sink).write(&front.bytes[front.written..]) {
                    Ok(0) => return fail(connection),
                    Ok(n) => {
                        front.written += n;
                        if front.written == front.bytes.len() {
                            held_bytes -= front.bytes.len();
                            queue.pop_front();
                        }
                    }
                    Err(e) if is_timeout(&e) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return fail(connection),
                }
                if connection.should_stop(shared) {
                    return;
                }
            }
        }
        if eof {
            if queue.is_empty() {
                // Everything delivered: pass the EOF on, and let the other direction finish.
                let _ = sink.shutdown(Shutdown::Write);
                return;
            }
            // Wait for the queue to become due (or the mode to change).
            std::thread::sleep(TICK);
            continue;
        }
        if held_bytes > MAX_HELD_BYTES {
            connection.reset();
            return;
        }
        // 2. Read more (bounded by TICK through the socket's read timeout).
        match (&*source).read(&mut buf) {
            Ok(0) => eof = true,
            Ok(n) => {
                let delay = match shared.mode() {
                    Mode::Delay(d) => d,
                    _ => Duration::ZERO,
                };
                held_bytes += n;
                queue.push_back(Held {
                    due: Instant::now() + delay,
                    bytes: buf[..n].to_vec(),
                    written: 0,
                });
            }
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return fail(connection),
        }
    }
}

/// One side failed (reset by its peer, ...): break the other side too, with an RST, as a
/// real network path would.
fn fail(connection: &Connection) {
    connection.broken.store(true, Ordering::SeqCst);
    connection.reset();
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// `SO_LINGER` with a zero timeout (closing sends RST): `TcpStream::set_linger` is not
/// stable yet.
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::net::TcpStream;

    #[cfg(unix)]
    pub fn linger_zero(stream: &TcpStream) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let len = libc::socklen_t::try_from(std::mem::size_of::<libc::linger>())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "linger size"))?;
        // SAFETY: the fd is a live socket owned by `stream` (borrowed for the call), and
        // `linger` is a valid `struct linger` of exactly `len` bytes that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                std::ptr::addr_of!(linger).cast::<libc::c_void>(),
                len,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Elsewhere: a plain close (FIN), which clients also see as a broken connection.
    #[cfg(not(unix))]
    pub fn linger_zero(_stream: &TcpStream) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisServer;

    /// A plain RESP client over one TCP connection.
    struct Client {
        stream: TcpStream,
    }

    impl Client {
        fn connect(addr: SocketAddr) -> io::Result<Client> {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            Ok(Client { stream })
        }

        fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
            let mut out = format!("*{}\r\n", args.len()).into_bytes();
            for arg in args {
                out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                out.extend_from_slice(arg);
                out.extend_from_slice(b"\r\n");
            }
            self.stream.write_all(&out)
        }

        /// Read until `expected` bytes arrived (or EOF, an error or the read timeout).
        fn read_exactly(&mut self, expected: usize) -> io::Result<Vec<u8>> {
            let mut got = vec![0u8; expected];
            self.stream.read_exact(&mut got)?;
            Ok(got)
        }

        fn timeout(&mut self, t: Duration) -> io::Result<()> {
            self.stream.set_read_timeout(Some(t))
        }
    }

    fn io_err(e: io::Error) -> Error {
        Error::new(format!("io: {e}"))
    }

    fn setup() -> Result<(RedisServer, FaultProxy)> {
        let server = RedisServer::start()?;
        let proxy = FaultProxy::start(server.addr())?;
        Ok((server, proxy))
    }

    /// Wait (bounded) until `f` holds.
    fn eventually(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn pass_forwards_both_ways() -> Result<()> {
        let (server, proxy) = setup()?;
        assert_eq!(proxy.url(), format!("redis://127.0.0.1:{}/", proxy.port()));
        assert_eq!(proxy.upstream(), server.addr());
        let mut c = Client::connect(proxy.addr()).map_err(io_err)?;
        c.send(&[b"PING"]).map_err(io_err)?;
        assert_eq!(c.read_exactly(7).map_err(io_err)?, b"+PONG\r\n");
        // A value larger than one chunk goes through intact.
        let big = vec![b'x'; 3 * CHUNK + 17];
        c.send(&[b"SET", b"k", &big]).map_err(io_err)?;
        assert_eq!(c.read_exactly(5).map_err(io_err)?, b"+OK\r\n");
        c.send(&[b"GET", b"k"]).map_err(io_err)?;
        let head = format!("${}\r\n", big.len());
        let reply = c.read_exactly(head.len() + big.len() + 2).map_err(io_err)?;
        assert_eq!(&reply[..head.len()], head.as_bytes());
        assert_eq!(&reply[head.len()..head.len() + big.len()], &big[..]);
        assert_eq!(proxy.connections_accepted(), 1);
        assert!(eventually(|| proxy.connections_open() == 1));
        Ok(())
    }

    #[test]
    fn delay_holds_every_chunk() -> Result<()> {
        let (_server, proxy) = setup()?;
        let mut c = Client::connect(proxy.addr()).map_err(io_err)?;
        proxy.set_mode(Mode::Delay(Duration::from_millis(150)));
        assert_eq!(proxy.mode(), Mode::Delay(Duration::from_millis(150)));
        let started = Instant::now();
        c.send(&[b"PING"]).map_err(io_err)?;
        assert_eq!(c.read_exactly(7).map_err(io_err)?, b"+PONG\r\n");
        // Delayed both ways: at least twice the delay (a lower bound, so never flaky).
        assert!(started.elapsed() >= Duration::from_millis(300));
        proxy.set_mode(Mode::Pass);
        c.send(&[b"PING"]).map_err(io_err)?;
        assert_eq!(c.read_exactly(7).map_err(io_err)?, b"+PONG\r\n");
        Ok(())
    }

    #[test]
    fn blackhole_answers_nothing_keeps_the_connection_and_heals() -> Result<()> {
        let (_server, proxy) = setup()?;
        let mut c = Client::connect(proxy.addr()).map_err(io_err)?;
        proxy.set_mode(Mode::Blackhole);
        c.send(&[b"PING"]).map_err(io_err)?;
        c.timeout(Duration::from_millis(300)).map_err(io_err)?;
        let mut byte = [0u8; 1];
        let silent = c.stream.read(&mut byte);
        assert!(
            matches!(&silent, Err(e) if is_timeout(e)),
            "a blackholed connection must neither answer nor close: {silent:?}"
        );
        // New connections are accepted, and silent too.
        let mut late = Client::connect(proxy.addr()).map_err(io_err)?;
        late.send(&[b"PING"]).map_err(io_err)?;
        late.timeout(Duration::from_millis(100)).map_err(io_err)?;
        assert!(matches!(late.stream.read(&mut byte), Err(e) if is_timeout(&e)));
        assert_eq!(proxy.connections_accepted(), 2);
        // The partition heals: the held PINGs are delivered, in order, and answered.
        proxy.set_mode(Mode::Pass);
        c.timeout(Duration::from_secs(5)).map_err(io_err)?;
        assert_eq!(c.read_exactly(7).map_err(io_err)?, b"+PONG\r\n");
        late.timeout(Duration::from_secs(5)).map_err(io_err)?;
        assert_eq!(late.read_exactly(7).map_err(io_err)?, b"+PONG\r\n");
        Ok(())
    }

    #[test]
    fn reset_mode_resets_open_and_new_connections() -> Result<()> {
        let (_server, proxy) = setup()?;
        let mut c = Client::connect(proxy.addr()).map_err(io_err)?;
        c.send(&[b"PING"]).map_err(io_err)?;
        assert_eq!(c.read_exactly(7).map_err(io_err)?, b"+PONG\r\n");
        proxy.set_mode(Mode::Reset);
        let mut byte = [0u8; 1];
        let read = c.stream.read(&mut byte);
        assert!(
            matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "an open connection must see an RST: {read:?}"
        );
        // A new connection is accepted by the kernel, then reset by the proxy (the RST may
        // already be there when `connect` checks the socket).
        let read = Client::connect(proxy.addr()).and_then(|mut late| late.stream.read(&mut byte));
        assert!(
            matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "a new connection must see an RST: {read:?}"
        );
        assert!(eventually(|| proxy.connections_accepted() == 2));
        assert_eq!(proxy.connections_open(), 0);
        // Back to normal.
        proxy.set_mode(Mode::Pass);
        let mut again = Client::connect(proxy.addr()).map_err(io_err)?;
        again.send(&[b"PING"]).map_err(io_err)?;
        assert_eq!(again.read_exactly(7).map_err(io_err)?, b"+PONG\r\n");
        Ok(())
    }

    #[test]
    fn reset_all_breaks_current_connections_once() -> Result<()> {
        let (_server, proxy) = setup()?;
        let mut a = Client::connect(proxy.addr()).map_err(io_err)?;
        let mut b = Client::connect(proxy.addr()).map_err(io_err)?;
        for c in [&mut a, &mut b] {
            c.send(&[b"PING"]).map_err(io_err)?;
            assert_eq!(c.read_exactly(7).map_err(io_err)?, b"+PONG\r\n");
        }
        assert!(eventually(|| proxy.connections_open() == 2));
        proxy.reset_all();
        assert_eq!(proxy.mode(), Mode::Pass);
        let mut byte = [0u8; 1];
        for c in [&mut a, &mut b] {
            let read = c.stream.read(&mut byte);
            assert!(
                matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
                "{read:?}"
            );
        }
        assert!(eventually(|| proxy.connections_open() == 0));
        let mut c = Client::connect(proxy.addr()).map_err(io_err)?;
        c.send(&[b"PING"]).map_err(io_err)?;
        assert_eq!(c.read_exactly(7).map_err(io_err)?, b"+PONG\r\n");
        assert_eq!(proxy.connections_accepted(), 3);
        Ok(())
    }

    #[test]
    fn server_closing_reaches_the_client() -> Result<()> {
        let (server, proxy) = setup()?;
        let mut c = Client::connect(proxy.addr()).map_err(io_err)?;
        c.send(&[b"PING"]).map_err(io_err)?;
        assert_eq!(c.read_exactly(7).map_err(io_err)?, b"+PONG\r\n");
        server.kill()?;
        let mut byte = [0u8; 1];
        let read = c.stream.read(&mut byte);
        assert!(
            matches!(&read, Ok(0)) || matches!(&read, Err(e) if !is_timeout(e)),
            "the client must see the server go away: {read:?}"
        );
        Ok(())
    }

    #[test]
    fn drop_stops_the_proxy() -> Result<()> {
        let (_server, proxy) = setup()?;
        let addr = proxy.addr();
        let mut c = Client::connect(addr).map_err(io_err)?;
        c.send(&[b"PING"]).map_err(io_err)?;
        assert_eq!(c.read_exactly(7).map_err(io_err)?, b"+PONG\r\n");
        drop(proxy);
        let mut byte = [0u8; 1];
        let read = c.stream.read(&mut byte);
        assert!(
            matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
        Ok(())
    }
}
