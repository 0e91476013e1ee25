//! The load generator: zipf-distributed keys, reads and writes over real HTTP to both
//! instances, latencies per instance and path, and a coherence check on every read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};

use crate::db::{Account, BoxError};
use crate::service::{Deposit, READ_FROM, READ_FROM_DATABASE};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client(concurrency: usize) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http()
}

/// One HTTP request; the status and the body.
pub async fn call(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes), BoxError> {
    call_with_headers(client, method, url, body)
        .await
        .map(|(status, _, bytes)| (status, bytes))
}

/// One HTTP request; the status, the headers and the body.
pub async fn call_with_headers(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, HeaderMap, Bytes), BoxError> {
    let mut req = Request::builder().method(method).uri(url);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, bytes))
}

/// Zipf over ranks `0..n` with exponent `s`, by inverse transform over the exact CDF
/// (n = 100,000 makes an 800 KB table and a 17-step binary search per draw).
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: u64, s: f64) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    /// A rank: 0 is the most popular.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> u64 {
        let u = rng.f64();
        (self.cdf.partition_point(|c| *c < u) as u64).min(self.cdf.len() as u64 - 1)
    }
}

pub struct Plan {
    pub requests: u64,
    pub concurrency: usize,
    pub rows: u64,
    pub write_ratio: f64,
    pub zipf_s: f64,
    pub seed: u64,
    /// Base URLs of the instances (`http://127.0.0.1:port`).
    pub instances: [String; 2],
}

/// An empty latency histogram: microseconds, 3 significant digits (a quantile is within
/// 0.1% of the exact one), growing to the largest value recorded.
pub fn histogram() -> Histogram<u64> {
    // `new` refuses only more than 5 significant digits.
    Histogram::new(3).unwrap_or_else(|e| unreachable!("{e}"))
}

/// Record a latency in microseconds.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    // `record` grows the histogram (it fails only if it cannot); `saturating_record` would
    // clamp to the current range instead.
    if h.record(us).is_err() {
        h.saturating_record(us);
    }
}

/// `from` added to `into` (`add` grows `into` as needed).
pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    if into.add(from).is_err() {
        unreachable!("an auto-resizing histogram takes any other");
    }
}

/// Latencies in microseconds, per instance and path.
#[derive(Clone)]
pub struct Latencies {
    pub reads: [Histogram<u64>; 2],
    pub writes: [Histogram<u64>; 2],
    /// The reads (of both instances) whose own request queried the database (the service
    /// says so in a response header): every read with the cache off, the loads with it on.
    pub reads_from_database: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            reads: [histogram(), histogram()],
            writes: [histogram(), histogram()],
            reads_from_database: histogram(),
        }
    }
}

#[derive(Default, Clone)]
pub struct Outcome {
    pub latencies: Latencies,
    /// Reads that returned an older version than a write acknowledged before the read was
    /// sent, per instance read, by whether that instance is the one that wrote the key.
    pub stale_same_instance: [u64; 2],
    pub stale_other_instance: [u64; 2],
    /// Per instance read, the longest time between a write's acknowledgement and a read
    /// sent after it that still saw the older value.
    pub max_stale_age: [Duration; 2],
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

impl Outcome {
    fn merge(&mut self, o: Outcome) {
        for i in 0..2 {
            merge(&mut self.latencies.reads[i], &o.latencies.reads[i]);
            merge(&mut self.latencies.writes[i], &o.latencies.writes[i]);
        }
        merge(
            &mut self.latencies.reads_from_database,
            &o.latencies.reads_from_database,
        );
        for i in 0..2 {
            self.stale_same_instance[i] += o.stale_same_instance[i];
            self.stale_other_instance[i] += o.stale_other_instance[i];
        }
        for i in 0..2 {
            self.max_stale_age[i] = self.max_stale_age[i].max(o.max_stale_age[i]);
        }
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// Which instance writes a key. One writer per key (a common layout: writes routed by key)
/// keeps the database and the cache in the same order for each key; every key is read on
/// both instances.
pub fn owner(id: u64) -> usize {
    (id % 2) as usize
}

/// What the load generator knows about writes: per key, the newest version acknowledged
/// and when (microseconds since the start).
struct Acked {
    version: Vec<AtomicU64>,
    at_us: Vec<AtomicU64>,
}

pub async fn run(plan: Plan) -> Outcome {
    let plan = Arc::new(plan);
    let zipf = Arc::new(Zipf::new(plan.rows, plan.zipf_s));
    let acked = Arc::new(Acked {
        version: (0..=plan.rows).map(|_| AtomicU64::new(0)).collect(),
        at_us: (0..=plan.rows).map(|_| AtomicU64::new(0)).collect(),
    });
    let client = client(plan.concurrency);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let progress = Arc::new(Progress::new(plan.requests));
    let mut workers = Vec::with_capacity(plan.concurrency);
    for w in 0..plan.concurrency {
        workers.push(tokio::spawn(worker(
            w as u64,
            plan.clone(),
            zipf.clone(),
            acked.clone(),
            client.clone(),
            next.clone(),
            progress.clone(),
            started,
        )));
    }
    let mut total = Outcome::default();
    for w in workers {
        match w.await {
            Ok(o) => total.merge(o),
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    total.elapsed = started.elapsed();
    progress.finish();
    total
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    w: u64,
    plan: Arc<Plan>,
    zipf: Arc<Zipf>,
    acked: Arc<Acked>,
    client: HttpClient,
    next: Arc<AtomicU64>,
    progress: Arc<Progress>,
    started: Instant,
) -> Outcome {
    let mut rng = fastrand::Rng::with_seed(plan.seed.wrapping_mul(1_000_003).wrapping_add(w));
    let mut out = Outcome::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= plan.requests {
            break;
        }
        let id = zipf.sample(&mut rng) + 1;
        let write = rng.f64() < plan.write_ratio;
        let result = if write {
            write_one(&plan, &client, &acked, &mut out, id, started, &mut rng).await
        } else {
            // Reads alternate between the instances.
            read_one(
                &plan,
                &client,
                &acked,
                &mut out,
                id,
                (i % 2) as usize,
                started,
            )
            .await
        };
        if let Err(e) = result {
            out.errors += 1;
            out.first_error.get_or_insert_with(|| e.to_string());
        }
        progress.inc();
    }
    out
}

async fn read_one(
    plan: &Plan,
    client: &HttpClient,
    acked: &Acked,
    out: &mut Outcome,
    id: u64,
    inst: usize,
    started: Instant,
) -> Result<(), BoxError> {
    let idx = id as usize;
    // What any correct answer must reach: the newest write acknowledged before this read.
    let floor = acked.version[idx].load(Ordering::Acquire);
    let floor_at = acked.at_us[idx].load(Ordering::Acquire);
    let sent = Instant::now();
    let url = format!("{}/accounts/{id}", plan.instances[inst]);
    let (status, headers, body) = call_with_headers(client, Method::GET, &url, None).await?;
    let took = sent.elapsed();
    record(&mut out.latencies.reads[inst], took);
    if headers
        .get(READ_FROM)
        .is_some_and(|v| v == READ_FROM_DATABASE)
    {
        record(&mut out.latencies.reads_from_database, took);
    }
    if status != StatusCode::OK {
        return Err(format!("GET {url}: {status}: {}", String::from_utf8_lossy(&body)).into());
    }
    let account: Account = serde_json::from_slice(&body)?;
    if account.version < floor {
        if inst == owner(id) {
            out.stale_same_instance[inst] += 1;
        } else {
            out.stale_other_instance[inst] += 1;
        }
        let sent_us = sent.duration_since(started).as_micros() as u64;
        let age = Duration::from_micros(sent_us.saturating_sub(floor_at));
        out.max_stale_age[inst] = out.max_stale_age[inst].max(age);
    }
    Ok(())
}

async fn write_one(
    plan: &Plan,
    client: &HttpClient,
    acked: &Acked,
    out: &mut Outcome,
    id: u64,
    started: Instant,
    rng: &mut fastrand::Rng,
) -> Result<(), BoxError> {
    let inst = owner(id);
    let url = format!("{}/accounts/{id}", plan.instances[inst]);
    let body = serde_json::to_vec(&Deposit {
        deposit_cents: rng.i64(1..=10_000),
    })?;
    let sent = Instant::now();
    let (status, resp) = call(client, Method::PUT, &url, Some(body)).await?;
    record(&mut out.latencies.writes[inst], sent.elapsed());
    if status != StatusCode::OK {
        return Err(format!("PUT {url}: {status}: {}", String::from_utf8_lossy(&resp)).into());
    }
    let account: Account = serde_json::from_slice(&resp)?;
    let idx = id as usize;
    acked.at_us[idx].store(started.elapsed().as_micros() as u64, Ordering::Release);
    acked.version[idx].fetch_max(account.version, Ordering::AcqRel);
    Ok(())
}

/// The load's progress on stderr: on a terminal a bar as wide as the terminal leaves room
/// for, redrawn in place (indicatif), `  ████░░░░  40%   8000/20000 requests    2345 req/s
/// 00:00:03`; elsewhere (CI logs, where indicatif hides the bar) a line per 10%.
struct Progress {
    bar: ProgressBar,
    total: u64,
    /// The last tenth announced by a line (when the bar is hidden).
    tenths: AtomicU64,
}

impl Progress {
    fn new(total: u64) -> Progress {
        // Draws on stderr, and nothing when stderr is not a terminal.
        let bar = ProgressBar::new(total);
        let template =
            "  {wide_bar} {percent:>3}%  {pos:>7}/{len} requests  {rate} req/s  {elapsed_precise}";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("█░").with_key(
                "rate",
                |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:>6.0}", rate(s.pos(), s.elapsed()));
                },
            ));
        }
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress {
            bar,
            total,
            tenths: AtomicU64::new(0),
        }
    }

    /// One request done.
    fn inc(&self) {
        self.bar.inc(1);
        if self.bar.is_hidden() && self.total > 0 {
            let n = self.bar.position();
            let tenth = n * 10 / self.total;
            if self.tenths.fetch_max(tenth, Ordering::Relaxed) < tenth {
                eprintln!(
                    "  {:>3}%  {n}/{} requests  {:.0} req/s",
                    n * 100 / self.total,
                    self.total,
                    rate(n, self.bar.elapsed())
                );
            }
        }
    }

    fn finish(&self) {
        self.bar.finish();
    }
}

/// Requests per second.
fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}
