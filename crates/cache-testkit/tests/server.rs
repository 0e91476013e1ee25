//! The test servers themselves: start, control, options.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cache_testkit::{shared_redis, RedisServer, Result, ServerOptions};

/// Send one inline command over plain TCP and read the first reply chunk.
fn raw(server: &RedisServer, command: &str, read_timeout: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(server.addr())?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn start_answers_and_uses_a_temp_dir() -> Result<()> {
    let server = RedisServer::start()?;
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );
    assert!(server.pid() > 0);
    assert!(server.dir().is_dir());
    assert_eq!(server.cli(&["PING"])?.trim(), "PONG");
    assert_eq!(server.cli(&["SET", "k", "v"])?.trim(), "OK");
    assert_eq!(server.cli(&["GET", "k"])?.trim(), "v");
    // No persistence.
    let save = server.cli(&["CONFIG", "GET", "save"])?;
    assert_eq!(save.lines().nth(1).unwrap_or("x").trim(), "", "{save}");
    let aof = server.cli(&["CONFIG", "GET", "appendonly"])?;
    assert_eq!(aof.lines().nth(1).map(str::trim), Some("no"));
    let dir = server.cli(&["CONFIG", "GET", "dir"])?;
    let canonical = server.dir().canonicalize().unwrap();
    assert_eq!(
        dir.lines().nth(1).map(str::trim),
        Some(canonical.to_str().unwrap())
    );
    Ok(())
}

#[test]
fn command_calls_counts_commandstats() -> Result<()> {
    let server = RedisServer::start()?;
    assert_eq!(server.command_calls("mget")?, 0);
    server.cli(&["MGET", "a", "b"])?;
    server.cli(&["MGET", "a"])?;
    assert_eq!(server.command_calls("mget")?, 2);
    assert_eq!(server.command_calls("MGET")?, 2);
    Ok(())
}

#[test]
fn drop_kills_the_process() -> Result<()> {
    let server = RedisServer::start()?;
    let pid = server.pid();
    let addr = server.addr();
    drop(server);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(TcpStream::connect(addr).is_err());
    Ok(())
}

#[test]
fn stop_freezes_and_cont_resumes() -> Result<()> {
    let server = RedisServer::start()?;
    server.stop()?;
    let frozen = raw(&server, "PING", Duration::from_millis(300));
    assert!(frozen.is_err(), "a stopped server answered: {frozen:?}");
    server.cont()?;
    assert_eq!(
        raw(&server, "PING", Duration::from_secs(5)).unwrap(),
        "+PONG\r\n"
    );
    Ok(())
}

#[test]
fn kill_then_restart_on_the_same_port() -> Result<()> {
    let server = RedisServer::start()?;
    let port = server.port();
    let first_pid = server.pid();
    server.cli(&["SET", "k", "v"])?;
    server.kill()?;
    assert!(!server.is_running());
    assert!(TcpStream::connect(server.addr()).is_err());
    server.kill()?; // killing a dead server is fine
    assert!(server.stop().is_err());
    server.restart()?;
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), first_pid);
    assert_eq!(server.cli(&["EXISTS", "k"])?.trim(), "0");
    Ok(())
}

#[test]
fn restart_a_stopped_server() -> Result<()> {
    let server = RedisServer::start()?;
    server.stop()?;
    let started = Instant::now();
    server.restart()?;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(server.cli(&["PING"])?.trim(), "PONG");
    Ok(())
}

#[test]
fn requirepass_server_refuses_anonymous_clients() -> Result<()> {
    let server = ServerOptions::new().with_requirepass("s3cret-pw").start()?;
    let reply = raw(&server, "GET k", Duration::from_secs(5)).unwrap();
    assert!(reply.starts_with("-NOAUTH"), "{reply}");
    // cli() authenticates with the configured password.
    assert_eq!(server.cli(&["PING"])?.trim(), "PONG");
    assert!(!server.url().contains("s3cret-pw"));
    Ok(())
}

#[test]
fn acl_user_lines_are_applied() -> Result<()> {
    let server = ServerOptions::new()
        .with_acl_user("alice on >alice-pw ~* &* +@all")
        .with_cli_auth(Some("alice"), "alice-pw")
        .start()?;
    assert_eq!(server.cli(&["ACL", "WHOAMI"])?.trim(), "alice");
    Ok(())
}

#[test]
fn bad_arguments_fail_with_the_log() {
    let err = ServerOptions::new()
        .with_arg("--no-such-option")
        .with_arg("1")
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("exited during startup"), "{err}");
}

#[test]
fn shared_server_is_one_per_binary() -> Result<()> {
    let a = shared_redis()?;
    let b = shared_redis()?;
    assert_eq!(a.port(), b.port());
    assert_eq!(a.cli(&["PING"])?.trim(), "PONG");
    Ok(())
}

#[test]
fn tls_port_serves_tls() -> Result<()> {
    let certs = cache_testkit::TestCerts::generate()?;
    let server = ServerOptions::new().with_tls(&certs)?.start()?;
    let tls_port = server.tls_port().unwrap();
    assert_ne!(tls_port, server.port());
    // The plain port still answers; the TLS one speaks TLS (redis-cli --tls with our CA).
    assert_eq!(server.cli(&["PING"])?.trim(), "PONG");
    let out = std::process::Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(&certs.ca_cert)
        .args(["-h", "localhost", "-p", &tls_port.to_string(), "PING"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "PONG",
        "{out:?}"
    );
    Ok(())
}
