//! Invalidation propagation between two processes: engine A (this process) invalidates keys
//! at a fixed rate; engine B (a child process: this bench binary re-executed with
//! `PROP_CHILD=tiercache`) holds the keys in its L1 and reports, on stdout, when each drop
//! happened. Side by side: raw redis-rs `PUBLISH` (this process) → `SUBSCRIBE` (a child with
//! `PROP_CHILD=raw`) between the same two kinds of process.
//!
//! Timestamps are `CLOCK_REALTIME` in both processes (`SystemTime::now`). The delay that is
//! judged runs from the publish on A to B: for tiercache from the moment A's observer sees
//! `InvalidationsSent` (the key handed to the bus, which `invalidate` does right after L2
//! deleted the key), for raw from just before the `PUBLISH`. The row's note adds tiercache's
//! delay from A's `Cache::invalidate(key)` call (spawned, so the pace holds), which includes
//! the L2 `DEL` round trip. B records the time its observer is told of
//! `InvalidationsReceived` (called right after the keys left its L1), or the raw subscriber
//! receives the message. Messages keep their order, so B's running count of received keys
//! maps each message to A's keys.
//!
//! Rates: 1,000 and 10,000 invalidations/s, paced in 1 ms ticks. tiercache runs twice: with
//! the default bus batch window of 0 (a message goes out at once; what queues meanwhile forms
//! the next batch) and with a 1 ms window (the first key of a batch waits up to 1 ms for more).
//!
//! Losses: after A is done, B counts the keys still in its L1 (never dropped: a real loss
//! that nothing detected) and the `InvalidationsLost` events (detected losses: each flushed
//! L1). For raw pub/sub every missing message is a loss nothing detects. A last run at
//! 1,000/s injects losses: `CLIENT KILL TYPE pubsub` when half of the keys are out.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use benches::{realtime_ns, sample_user, Latencies, Record, Role, TargetKind, User};
use cache_tiered::{BusConfig, Cache, CacheEvent, CacheObserver, MsgPack, Observer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CACHE_NAME: &str = "p";

fn key(i: usize) -> String {
    format!("k:{i}")
}

// ---------------------------------------------------------------- children

/// Lines to stdout from one thread, flushed whenever the queue is empty.
fn printer() -> mpsc::Sender<String> {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        while let Ok(line) = rx.recv() {
            let _ = writeln!(out, "{line}");
            while let Ok(more) = rx.try_recv() {
                let _ = writeln!(out, "{more}");
            }
            let _ = out.flush();
        }
    });
    tx
}

struct Events {
    tx: std::sync::Mutex<mpsc::Sender<String>>,
    lost: AtomicU64,
}

impl CacheObserver for Events {
    fn on_event(&self, event: CacheEvent) {
        let line = match event {
            CacheEvent::InvalidationsReceived { keys } => format!("R {} {keys}", realtime_ns()),
            CacheEvent::InvalidationsLost => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                format!("X {}", realtime_ns())
            }
            _ => return,
        };
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(line);
        }
    }
}

/// Hands the same cache observer to every cache of the engine.
struct Every<T>(Arc<T>);

impl<T: CacheObserver> Observer for Every<T> {
    fn for_cache(&self, _cache: &str) -> Arc<dyn CacheObserver> {
        Arc::clone(&self.0) as Arc<dyn CacheObserver>
    }
}

/// The engine and cache both sides use: Redis at `url`, the bus batch `window`, `observer`,
/// a day's TTL in both tiers.
async fn bench_cache(
    url: &str,
    prefix: &str,
    window: Duration,
    observer: Arc<dyn Observer>,
) -> Result<(cache_tiered::Engine, Cache<User, MsgPack>), BoxError> {
    let engine = cache_tiered::builder(prefix)
        .with_redis_url(url)
        .with_bus_config(BusConfig::default().with_batch_window(window))
        .with_observer(observer)
        .build()
        .await?;
    let day = Duration::from_secs(86_400);
    let cache = engine
        .cache::<User, MsgPack>(CACHE_NAME)
        .with_l1_ttl(day)
        .with_l2_ttl(day)
        .build()?;
    Ok((engine, cache))
}

/// A's observer: when each key was handed to the bus (`InvalidationsSent`, right after L2
/// deleted it), while `on` is set.
#[derive(Default)]
struct SentTimes {
    on: std::sync::atomic::AtomicBool,
    at: std::sync::Mutex<Vec<u128>>,
}

impl CacheObserver for SentTimes {
    fn on_event(&self, event: CacheEvent) {
        if let CacheEvent::InvalidationsSent { keys } = event {
            if self.on.load(Ordering::SeqCst) {
                let now = realtime_ns();
                if let Ok(mut at) = self.at.lock() {
                    at.extend(std::iter::repeat_n(now, keys as usize));
                }
            }
        }
    }
}

/// Blocks until the line `word` on stdin (or stdin closes).
fn wait_line(word: &str) {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line {
            Ok(l) if l.trim() == word => return,
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

async fn child_tiercache(url: String) -> Result<(), BoxError> {
    let prefix = std::env::var("PROP_PREFIX")?;
    let n: usize = std::env::var("PROP_N")?.parse()?;
    let window_us: u64 = std::env::var("PROP_WINDOW_US")?.parse()?;
    let tx = printer();
    let events = Arc::new(Events {
        tx: std::sync::Mutex::new(tx.clone()),
        lost: AtomicU64::new(0),
    });
    let (_engine, cache) = bench_cache(
        &url,
        &prefix,
        Duration::from_micros(window_us),
        Arc::new(Every(Arc::clone(&events))),
    )
    .await?;
    let keys: Vec<String> = (0..n).map(key).collect();
    let _ = tx.send("READY".into());
    // The parent probes until this process hears it (the first message from a publisher
    // that has sent before may count as a gap and flush L1), then asks for the fill.
    tokio::task::spawn_blocking(|| wait_line("FILL")).await?;
    for chunk in keys.chunks(500) {
        let got = cache.get_many(chunk).await?;
        if got.iter().any(Option::is_none) {
            return Err("B: a key is missing from L2".into());
        }
    }
    let filled = keys
        .iter()
        .filter(|k| matches!(cache.get_local(k), Some(Some(_))))
        .count();
    let _ = tx.send(format!("FILLED {filled}"));
    tokio::task::spawn_blocking(|| wait_line("END")).await?;
    let left = keys
        .iter()
        .filter(|k| matches!(cache.get_local(k), Some(Some(_))))
        .count();
    let _ = tx.send(format!("LEFT {left}"));
    let _ = tx.send(format!("LOST {}", events.lost.load(Ordering::Relaxed)));
    let _ = tx.send("DONE".into());
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

async fn child_raw(url: String) -> Result<(), BoxError> {
    use futures::StreamExt;
    let channel = std::env::var("PROP_CHANNEL")?;
    let tx = printer();
    let client = redis::Client::open(url.as_str())?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&channel).await?;
    let _ = tx.send("READY".into());
    let tx2 = tx.clone();
    tokio::spawn(async move {
        let mut stream = pubsub.on_message();
        while let Some(msg) = stream.next().await {
            let at = realtime_ns();
            let payload: String = msg.get_payload().unwrap_or_default();
            let _ = tx2.send(format!("D {payload} {at}"));
        }
    });
    tokio::task::spawn_blocking(|| wait_line("END")).await?;
    let _ = tx.send("DONE".into());
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

// ---------------------------------------------------------------- parent

struct Child {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Child {
    fn spawn(envs: &[(&str, String)]) -> Result<Child, BoxError> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Child { child, lines: rx })
    }

    async fn wait_for(&self, prefix: &str, timeout: Duration) -> Result<Vec<String>, BoxError> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            while let Ok(l) = self.lines.try_recv() {
                let done = l.starts_with(prefix);
                seen.push(l);
                if done {
                    return Ok(seen);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("child: no {prefix} within {timeout:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn drain(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    fn say(&mut self, word: &str) -> Result<(), BoxError> {
        let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
        writeln!(stdin, "{word}")?;
        stdin.flush()?;
        Ok(())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Paces `n` sends at `rate`/s in 1 ms ticks; `send(i)` is called once per index.
async fn paced(n: usize, rate: u64, mut send: impl FnMut(usize)) {
    let start = Instant::now();
    let mut i = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while i < n {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize + 1).min(n);
        while i < due {
            send(i);
            i += 1;
        }
    }
}

struct Outcome {
    /// From the publish on A (tiercache: when the key was handed to the bus, after the L2
    /// delete; raw: the PUBLISH call) to B.
    delays: Latencies,
    /// tiercache only: from A's `invalidate()` call (L2 delete included) to B.
    from_call: Option<Latencies>,
    received: usize,
    left: usize,
    detected: u64,
}

/// `CLIENT KILL TYPE pubsub` (every subscriber's connection, B's included), sent when half of
/// the keys are out: the invalidations published until B has resubscribed are lost to B.
fn kill_subscribers(con: &redis::aio::MultiplexedConnection) -> tokio::task::JoinHandle<()> {
    let mut con = con.clone();
    tokio::spawn(async move {
        let _ = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async::<i64>(&mut con)
            .await;
    })
}

async fn run_tiercache(
    url: &str,
    rate: u64,
    n: usize,
    window: Duration,
    tag: &str,
    kill_mid: bool,
) -> Result<Outcome, BoxError> {
    let killer = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let prefix = format!("benchprop{}{tag}", realtime_ns());
    let sent_times = Arc::new(SentTimes::default());
    let (_engine, cache) = bench_cache(
        url,
        &prefix,
        window,
        Arc::new(Every(Arc::clone(&sent_times))),
    )
    .await?;
    let value = Arc::new(sample_user(1));
    let keys: Vec<String> = (0..n).map(key).collect();
    for chunk in keys.chunks(256) {
        let futs = chunk
            .iter()
            .map(|k| cache.set_shared(k, Arc::clone(&value)));
        for r in futures::future::join_all(futs).await {
            r?;
        }
    }
    let mut child = Child::spawn(&[
        ("PROP_CHILD", "tiercache".into()),
        ("REDIS_URL", url.to_owned()),
        ("PROP_PREFIX", prefix.clone()),
        ("PROP_N", n.to_string()),
        ("PROP_WINDOW_US", window.as_micros().to_string()),
    ])?;
    child.wait_for("READY", Duration::from_secs(60)).await?;
    // Probe until B hears A (its subscription is live), then let the probes settle.
    let mut heard = false;
    for _ in 0..250 {
        cache.invalidate("probe").await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if child.drain().iter().any(|l| l.starts_with("R ")) {
            heard = true;
            break;
        }
    }
    if !heard {
        return Err("B never heard A's invalidations".into());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.say("FILL")?;
    let lines = child.wait_for("FILLED", Duration::from_secs(60)).await?;
    let filled: usize = lines
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("0")
        .parse()?;
    if filled != n {
        return Err(format!("B holds {filled} of {n} keys in L1 after the fill").into());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = child.drain();

    let mut sent = vec![0u128; n];
    let mut handles = Vec::with_capacity(n);
    sent_times.on.store(true, Ordering::SeqCst);
    let mut kill = None;
    paced(n, rate, |i| {
        if kill_mid && i == n / 2 {
            kill = Some(kill_subscribers(&killer));
        }
        sent[i] = realtime_ns();
        let c = cache.clone();
        handles.push(tokio::spawn(async move { c.invalidate(&key(i)).await }));
    })
    .await;
    if let Some(k) = kill {
        k.await?;
    }
    for h in handles {
        h.await??;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.say("END")?;
    let lines = child.wait_for("DONE", Duration::from_secs(30)).await?;
    sent_times.on.store(false, Ordering::SeqCst);
    let published: Vec<u128> = sent_times.at.lock().map(|v| v.clone()).unwrap_or_default();
    if published.len() != n {
        return Err(format!("A announced {} of {n} invalidations", published.len()).into());
    }
    let mut delays = Vec::with_capacity(n);
    let mut from_call = Vec::with_capacity(n);
    let mut next = 0usize;
    let (mut left, mut detected) = (0usize, 0u64);
    for l in &lines {
        let mut it = l.split_whitespace();
        match it.next() {
            Some("R") => {
                let at: u128 = it.next().unwrap_or("0").parse()?;
                let keys: usize = it.next().unwrap_or("0").parse()?;
                // Messages keep their order: B's k-th key is A's k-th announced key (the
                // call times are matched by order too: calls overtake each other rarely).
                for _ in 0..keys {
                    if next < n {
                        delays.push(at.saturating_sub(published[next]) as f64);
                        from_call.push(at.saturating_sub(sent[next]) as f64);
                    }
                    next += 1;
                }
            }
            Some("LEFT") => left = it.next().unwrap_or("0").parse()?,
            Some("X") => detected += 1,
            _ => {}
        }
    }
    Ok(Outcome {
        delays: Latencies::from_ns(delays),
        from_call: Some(Latencies::from_ns(from_call)),
        received: next.min(n),
        left,
        detected,
    })
}

async fn run_raw(url: &str, rate: u64, n: usize, kill_mid: bool) -> Result<Outcome, BoxError> {
    let channel = format!("benchprop:raw:{}", realtime_ns());
    let client = redis::Client::open(url)?;
    let con = client.get_multiplexed_async_connection().await?;
    let mut child = Child::spawn(&[
        ("PROP_CHILD", "raw".into()),
        ("REDIS_URL", url.to_owned()),
        ("PROP_CHANNEL", channel.clone()),
    ])?;
    child.wait_for("READY", Duration::from_secs(60)).await?;
    let mut sent = vec![0u128; n];
    let mut handles = Vec::with_capacity(n);
    let mut kill = None;
    paced(n, rate, |i| {
        if kill_mid && i == n / 2 {
            kill = Some(kill_subscribers(&con));
        }
        sent[i] = realtime_ns();
        let mut c = con.clone();
        let ch = channel.clone();
        handles.push(tokio::spawn(async move {
            redis::cmd("PUBLISH")
                .arg(ch)
                .arg(i.to_string())
                .query_async::<i64>(&mut c)
                .await
        }));
    })
    .await;
    for h in handles {
        h.await??;
    }
    if let Some(k) = kill {
        k.await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.say("END")?;
    let lines = child.wait_for("DONE", Duration::from_secs(30)).await?;
    let mut got = vec![false; n];
    let mut delays = Vec::with_capacity(n);
    for l in &lines {
        let mut it = l.split_whitespace();
        if it.next() == Some("D") {
            let i: usize = it.next().unwrap_or("").parse()?;
            let at: u128 = it.next().unwrap_or("0").parse()?;
            if i < n && !got[i] {
                got[i] = true;
                delays.push(at.saturating_sub(sent[i]) as f64);
            }
        }
    }
    let received = got.iter().filter(|g| **g).count();
    Ok(Outcome {
        delays: Latencies::from_ns(delays),
        from_call: None,
        received,
        left: n - received,
        detected: 0,
    })
}

fn main() -> Result<(), BoxError> {
    if let Ok(role) = std::env::var("PROP_CHILD") {
        let url = std::env::var("REDIS_URL")?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        return rt.block_on(async move {
            match role.as_str() {
                "tiercache" => child_tiercache(url).await,
                _ => child_raw(url).await,
            }
        });
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let smoke = args.iter().any(|a| a == "--test");
    if !benches::selected(&benches::filters(), "propagation") {
        return Ok(());
    }
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!(
            "propagation: REDIS_URL is not set; skipped (`cargo xtask bench` starts a Redis)"
        );
        return Ok(());
    };
    let secs = if smoke {
        0.1
    } else if benches::quick() {
        1.5
    } else {
        5.0
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let records = rt.block_on(async move {
        let mut records = Vec::new();
        for rate in [1_000u64, 10_000] {
            let n = (rate as f64 * secs) as usize;
            let raw = run_raw(&url, rate, n, false).await?;
            let def =
                run_tiercache(&url, rate, n, BusConfig::default().batch_window, "d", false).await?;
            let windowed =
                run_tiercache(&url, rate, n, Duration::from_millis(1), "w", false).await?;
            let from_call = |o: &Outcome| match &o.from_call {
                Some(c) => format!(
                    "; from the invalidate() call (L2 DEL included): p50 {:.1} µs / p99 {:.1} µs",
                    c.percentile(50.0) / 1e3,
                    c.percentile(99.0) / 1e3
                ),
                None => String::new(),
            };
            let show = |name: &str, o: &Outcome| {
                eprintln!(
                    "propagation {rate:>5}/s {name:<28} p50 {:>8.1} µs  p99 {:>8.1} µs  received {}/{n}  left in L1 {}  detected losses {}{}",
                    o.delays.percentile(50.0) / 1e3,
                    o.delays.percentile(99.0) / 1e3,
                    o.received,
                    o.left,
                    o.detected,
                    from_call(o)
                );
            };
            show("raw PUBLISH/SUBSCRIBE", &raw);
            show("tiercache (default, window 0)", &def);
            show("tiercache (1 ms window)", &windowed);
            let rec = |w: &str, subject: &str, role: Role, label: &str, o: &Outcome, how: &str| {
                let undetected = if o.detected > 0 { 0 } else { o.left };
                let mut r = Record::result(w, subject, role, label, "p50_us");
                if let Some(c) = &o.from_call {
                    r = r
                        .num("call_p50_us", c.percentile(50.0) / 1e3)
                        .num("call_p99_us", c.percentile(99.0) / 1e3);
                }
                r
                    .num("p50_us", o.delays.percentile(50.0) / 1e3)
                    .num("p99_us", o.delays.percentile(99.0) / 1e3)
                    .num("mean_us", o.delays.mean() / 1e3)
                    .num("sent", n as f64)
                    .num("received", o.received as f64)
                    .num("lost", o.left as f64)
                    .num("detected_losses", o.detected as f64)
                    .num("undetected", undetected as f64)
                    .str(
                        "note",
                        &format!("lost {}, detected {}{}", o.left, o.detected, from_call(o)),
                    )
                    .str("how", how)
            };
            for (tag, o, window_text) in [
                ("default: batch window 0", &def, "BusConfig default (batch window 0)"),
                ("1 ms batch window", &windowed, "BusConfig batch_window 1 ms"),
            ] {
                let w = format!("propagation {rate}/s ({tag})");
                records.push(rec(
                    &w,
                    "tiercache",
                    Role::Tiercache,
                    "tiercache",
                    o,
                    &format!(
                        "A: Cache::invalidate(key) spawned at {rate}/s in 1 ms ticks, {n} keys; B (child process, \
                         {window_text}) holds them in L1; delay = B's observer InvalidationsReceived time - the time A's \
                         observer saw InvalidationsSent (the key handed to the bus, after the L2 DEL), CLOCK_REALTIME; \
                         the note adds the delay from A's invalidate() call (DEL round trip included); lost = keys \
                         still in B's L1 at the end"
                    ),
                ));
                records.push(rec(
                    &w,
                    "raw_pubsub",
                    Role::Peer,
                    "raw redis-rs PUBLISH→SUBSCRIBE",
                    &raw,
                    &format!(
                        "A: PUBLISH of the key index spawned at {rate}/s on a MultiplexedConnection; B (child \
                         process) subscribed with get_async_pubsub; delay = receive time - send time, CLOCK_REALTIME; \
                         every missing message is an undetected loss"
                    ),
                ));
                if o.from_call.is_some() && !std::ptr::eq(o, &def) {
                    // A batch window holds the first key back by design (an opt-in trade of
                    // latency for fewer messages): the targets apply to the default.
                    continue;
                }
                records.push(Record::target(
                    &w,
                    "p50_us",
                    "raw_pubsub",
                    TargetKind::MaxDiff,
                    50.0,
                    "p50 <= raw + 50 µs",
                ));
                records.push(Record::target(
                    &w,
                    "p99_us",
                    "raw_pubsub",
                    TargetKind::MaxDiff,
                    500.0,
                    "p99 <= raw p99 + 0.5 ms",
                ));
                records.push(Record::target(
                    &w,
                    "undetected",
                    "",
                    TargetKind::MaxAbs,
                    0.0,
                    "no loss left undetected",
                ));
            }
        }
        // Losses on purpose: every subscriber's connection is killed when half of the keys are
        // out. tiercache must notice (and flush B's L1); raw pub/sub just misses what follows.
        {
            let rate = 1_000u64;
            let n = (rate as f64 * secs) as usize;
            let raw = run_raw(&url, rate, n, true).await?;
            let tc =
                run_tiercache(&url, rate, n, BusConfig::default().batch_window, "k", true).await?;
            let w = format!("propagation {rate}/s, subscriptions killed mid-run");
            for (subject, role, label, o) in [
                ("tiercache", Role::Tiercache, "tiercache", &tc),
                (
                    "raw_pubsub",
                    Role::Peer,
                    "raw redis-rs PUBLISH→SUBSCRIBE",
                    &raw,
                ),
            ] {
                let undetected = if o.detected > 0 { 0 } else { o.left };
                eprintln!(
                    "propagation {rate:>5}/s killed mid-run {label:<30} received {}/{n}  left in L1 {}  detected losses {}  undetected {undetected}",
                    o.received, o.left, o.detected
                );
                records.push(
                    Record::result(&w, subject, role, label, "undetected")
                        .num("undetected", undetected as f64)
                        .num("sent", n as f64)
                        .num("received", o.received as f64)
                        .num("lost", o.left as f64)
                        .num("detected_losses", o.detected as f64)
                        .str(
                            "note",
                            &format!(
                                "received {} of {n}; stale copies left {}; losses detected {}",
                                o.received, o.left, o.detected
                            ),
                        )
                        .str(
                            "how",
                            "as the rows above (default bus config), plus CLIENT KILL TYPE pubsub when half of \
                             the keys are out: B's subscription drops and the messages published until it is back \
                             are lost to B. undetected = stale copies left in B's L1 when no loss was detected \
                             (raw: every missed message)",
                        ),
                );
            }
            records.push(Record::target(
                &w,
                "undetected",
                "",
                TargetKind::MaxAbs,
                0.0,
                "no loss left undetected",
            ));
        }
        Ok::<_, BoxError>(records)
    })?;
    if !smoke {
        let path = benches::write_records("propagation", &records)?;
        eprintln!("propagation: wrote {}", path.display());
    }
    Ok(())
}
