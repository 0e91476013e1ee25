//! Command-line options (hand-parsed: a handful of flags do not need a parser crate).

use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: demo [options]            (normally run through `cargo xtask demo [options]`)

  --requests N          requests the load generator sends (default 20000)
  --concurrency N       requests in flight at once (default 32)
  --rows N              rows in the SQLite table (default 100000)
  --write-percent P     share of writes, in percent (default 5)
  --zipf S              zipf exponent of the key popularity (default 1.0)
  --db-latency-ms MS    network latency added to every SQLite query, as a database
                        server would have (default 1; 0 for bare in-process SQLite)
  --seed N              seed of the load generator (default 42)
  --redis-url URL       Redis for the L2 (default: $REDIS_URL)
  --embedded-l2         no Redis: both instances share an in-process L2 and bus
  --database-url URL    PostgreSQL instead of SQLite (postgres://user@host/db): a table is
                        created for the run and dropped after
  --no-baseline         skip the cache-off run (the same load first sent to instances
                        that read every account from the database) and its comparison
  --chart PATH          where the SVG chart of the cache-off and cache-on runs goes
                        (default: target/demo/cache-off-vs-on.svg, under $CARGO_TARGET_DIR
                        when set)
  --serve               keep both instances serving after the run (Ctrl-C stops)
  -h, --help            this text";

/// Where the L2 lives.
#[derive(Debug, Clone)]
pub enum L2Choice {
    Redis(String),
    Embedded {
        /// Why: chosen with `--embedded-l2`, or no Redis URL was given.
        asked: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Args {
    pub requests: u64,
    pub concurrency: usize,
    pub rows: u64,
    pub write_ratio: f64,
    pub zipf_s: f64,
    pub db_latency: Duration,
    pub seed: u64,
    pub l2: L2Choice,
    pub database_url: Option<String>,
    pub serve: bool,
    /// Run the same load with the cache off first, for the comparison.
    pub baseline: bool,
    /// Where the comparison chart goes.
    pub chart: PathBuf,
}

/// `target/demo/cache-off-vs-on.svg` (relative to the current directory, which is the
/// workspace under `cargo xtask demo`), or under `$CARGO_TARGET_DIR` when that is set.
pub fn default_chart(target_dir: Option<PathBuf>) -> PathBuf {
    target_dir
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("demo")
        .join("cache-off-vs-on.svg")
}

/// What `parse` found: options to run with, or a request for the usage text.
pub enum Parsed {
    Run(Args),
    Help,
}

fn value<'a>(it: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<&'a str, String> {
    it.next()
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn number<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{flag}: `{s}` is not a valid number"))
}

/// The options in `argv`; `env_redis_url` is `$REDIS_URL`, `target_dir` `$CARGO_TARGET_DIR`.
pub fn parse(
    argv: &[String],
    env_redis_url: Option<String>,
    target_dir: Option<PathBuf>,
) -> Result<Parsed, String> {
    let mut a = Args {
        requests: 20_000,
        concurrency: 32,
        rows: 100_000,
        write_ratio: 0.05,
        zipf_s: 1.0,
        db_latency: Duration::from_millis(1),
        seed: 42,
        l2: L2Choice::Embedded { asked: false },
        database_url: None,
        serve: false,
        baseline: true,
        chart: PathBuf::new(),
    };
    let mut chart = None;
    let mut redis_url = None;
    let mut embedded = false;
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--requests" => a.requests = number(value(&mut it, flag)?, flag)?,
            "--concurrency" => a.concurrency = number(value(&mut it, flag)?, flag)?,
            "--rows" => a.rows = number(value(&mut it, flag)?, flag)?,
            "--write-percent" => {
                let p: f64 = number(value(&mut it, flag)?, flag)?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(format!("{flag} must be within 0..=100"));
                }
                a.write_ratio = p / 100.0;
            }
            "--zipf" => a.zipf_s = number(value(&mut it, flag)?, flag)?,
            "--db-latency-ms" => {
                a.db_latency = Duration::from_millis(number(value(&mut it, flag)?, flag)?)
            }
            "--seed" => a.seed = number(value(&mut it, flag)?, flag)?,
            "--redis-url" => redis_url = Some(value(&mut it, flag)?.to_owned()),
            "--embedded-l2" => embedded = true,
            "--database-url" => a.database_url = Some(value(&mut it, flag)?.to_owned()),
            "--serve" => a.serve = true,
            "--no-baseline" => a.baseline = false,
            "--chart" => chart = Some(PathBuf::from(value(&mut it, flag)?)),
            other => return Err(format!("unknown option `{other}`\n\n{USAGE}")),
        }
    }
    if a.requests == 0 || a.concurrency == 0 || a.rows == 0 {
        return Err("--requests, --concurrency and --rows must be positive".into());
    }
    if !(a.zipf_s.is_finite() && a.zipf_s >= 0.0) {
        return Err("--zipf must be a non-negative number".into());
    }
    a.chart = chart.unwrap_or_else(|| default_chart(target_dir));
    a.l2 = match (embedded, redis_url.or(env_redis_url)) {
        (true, _) => L2Choice::Embedded { asked: true },
        (false, Some(url)) => L2Choice::Redis(url),
        (false, None) => L2Choice::Embedded { asked: false },
    };
    Ok(Parsed::Run(a))
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn run(argv: &[&str], target_dir: Option<&str>) -> Args {
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        match parse(&argv, None, target_dir.map(PathBuf::from)) {
            Ok(Parsed::Run(a)) => a,
            Ok(Parsed::Help) => panic!("help instead of a run"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_baseline_runs_unless_asked_not_to() {
        assert!(run(&[], None).baseline);
        assert!(!run(&["--no-baseline"], None).baseline);
    }

    #[test]
    fn the_chart_goes_under_the_target_directory_unless_given() {
        assert_eq!(
            run(&[], None).chart,
            PathBuf::from("target/demo/cache-off-vs-on.svg")
        );
        assert_eq!(
            run(&[], Some("/tmp/t")).chart,
            PathBuf::from("/tmp/t/demo/cache-off-vs-on.svg")
        );
        assert_eq!(
            run(&["--chart", "out/c.svg"], Some("/tmp/t")).chart,
            PathBuf::from("out/c.svg")
        );
        let argv = vec!["--chart".to_owned()];
        assert!(parse(&argv, None, None).is_err());
    }
}
