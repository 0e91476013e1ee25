//! Finding binaries and free ports, and spawning processes that die with the test process.

use std::io::{self, Read};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};

use crate::error::{Error, Result};
use crate::sys;

/// The command that installs the Redis binaries these tests need (Debian / Ubuntu).
pub const INSTALL_HINT: &str = "apt-get install -y redis-server redis-tools";

/// A TCP port on `127.0.0.1` that was free a moment ago (bind to port 0, read it, release it).
///
/// Another process may take it before you do; [`RedisServer::start`](crate::RedisServer::start)
/// retries with a new port when that happens.
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

pub(crate) fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
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
pub(crate) fn spawn_process(program: &Path, args: &[String]) -> Result<Child> {
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
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
