//! Servers die with the test process, even the never-dropped shared one.
//!
//! The test re-runs this test binary as a child process (running only
//! `child_process_helper`), which starts servers and writes their pids to a file; then the
//! child exits normally (statics are not dropped) or is SIGKILLed, and the servers must die.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cache_testkit::{shared_redis, RedisServer};

const PIDFILE_ENV: &str = "CACHE_TESTKIT_PDEATHSIG_PIDFILE";
const MODE_ENV: &str = "CACHE_TESTKIT_PDEATHSIG_MODE";

/// Does nothing unless run as the child of `servers_die_with_the_test_process`.
#[test]
fn child_process_helper() {
    let Some(pidfile) = std::env::var_os(PIDFILE_ENV) else {
        return;
    };
    let shared = shared_redis().unwrap();
    let private = RedisServer::start().unwrap();
    let pids = format!("{} {}\n", shared.pid(), private.pid());
    // Leak the private one as well: only the parent-death signal can kill it now.
    std::mem::forget(private);
    let tmp = PathBuf::from(format!("{}.tmp", Path::new(&pidfile).display()));
    std::fs::write(&tmp, pids).unwrap();
    std::fs::rename(&tmp, &pidfile).unwrap();
    if std::env::var(MODE_ENV).as_deref() == Ok("hang") {
        std::thread::sleep(Duration::from_secs(60));
    } else {
        // Exit (normally, statics not dropped) once the parent has seen the servers alive.
        let go = go_file(Path::new(&pidfile));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !go.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn go_file(pidfile: &Path) -> PathBuf {
    PathBuf::from(format!("{}.go", pidfile.display()))
}

fn alive(pid: u32) -> bool {
    // A zombie (state Z) is dead for our purpose: it holds no port, it just was not reaped.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

fn wait_dead(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn run_child(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_helper", "--test-threads=1"])
        .env(PIDFILE_ENV, &pidfile)
        .env(MODE_ENV, mode)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pidfile.exists() {
        assert!(Instant::now() < deadline, "child never wrote its pids");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("child exited before writing its pids: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids: Vec<u32> = std::fs::read_to_string(&pidfile)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    for &pid in &pids {
        assert!(
            alive(pid),
            "server {pid} is not running while its owner lives"
        );
    }
    if mode == "hang" {
        child.kill().unwrap();
    } else {
        std::fs::write(go_file(&pidfile), b"go").unwrap();
    }
    let status = child.wait().unwrap();
    if mode == "exit" {
        assert!(status.success(), "child failed: {status}");
    }
    for &pid in &pids {
        assert!(
            wait_dead(pid),
            "server {pid} outlived its test process ({mode})"
        );
    }
}

#[test]
fn servers_die_when_the_test_process_exits() {
    run_child("exit");
}

#[test]
fn servers_die_when_the_test_process_is_killed() {
    run_child("hang");
}
