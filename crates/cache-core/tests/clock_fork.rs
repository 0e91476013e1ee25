//! The default clock keeps moving in a process forked without `exec` (its own binary: a fork
//! is only safe while no other thread can hold a lock the child needs).
#![cfg(unix)]
#![allow(unsafe_code, clippy::panic)]

use std::time::{Duration, Instant};

use cache_core::support::system_now_ms;

#[test]
fn a_forked_child_gets_its_own_clock_thread() {
    // Start the parent's clock thread, then fork: the child inherits a reading that no
    // thread of its own updates.
    let parent_start = system_now_ms();
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        system_now_ms() > parent_start,
        "the parent's clock does not move"
    );

    // SAFETY: this binary's other threads are the harness' main thread (waiting for this
    // test) and the clock thread (sleeping or storing an atomic): neither holds a lock the
    // child needs. The child leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let a = system_now_ms();
        std::thread::sleep(Duration::from_millis(60));
        let b = system_now_ms();
        let code = if b >= a + 40 { 0 } else { 1 };
        // SAFETY: ends the child without running the parent's destructors or harness.
        unsafe { libc::_exit(code) };
    }
    assert!(pid > 0, "fork failed");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child, without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: the child is ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child did not finish within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "in the forked child the clock stood still (status {status})"
    );
}
