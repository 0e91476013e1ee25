//! The targets of the workspace members (read from `cargo metadata`), the runs that cover the
//! ones behind `required-features`, and the check that no test target was skipped.
//!
//! `cargo test --workspace` builds a target whose `required-features` are off by leaving it
//! out, silently. So `cargo xtask test` adds one `cargo test -p <package> --features <the
//! union of their required features> --test <name>...` per package with such test targets
//! that the workspace run did not build (and one `cargo clippy` likewise for its gated
//! tests, examples and benches), and then
//! checks that every integration test target listed by `cargo metadata` ran: each `cargo
//! test` is first built with `--no-run --message-format=json-render-diagnostics` (which
//! names the executable of every target), then run while its stderr is echoed and its
//! `Running … (target/debug/deps/name-hash)` lines are collected.

use std::io::{BufRead as _, BufReader, IsTerminal as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::{cargo, Result};

/// Workspace members left out of the workspace test runs: the demo (axum, SQLite) has its own
/// step, `cargo test -p demo` then `cargo build -p demo` (see `main.rs`).
pub(crate) const NO_TESTS: &[&str] = &["demo"];

/// (package, feature) pairs that `cargo xtask test` never turns on: the benches' `peers`
/// pulls the heavy peer crates (`cargo xtask bench` builds them).
const NOT_TESTED: &[(&str, &str)] = &[("benches", "peers")];

/// One target of a workspace member.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    /// Its package's name.
    pub(crate) package: String,
    /// The target's name (`--test NAME`, `--example NAME`).
    pub(crate) name: String,
    /// `lib`, `bin`, `test`, `example`, `bench`, ...
    pub(crate) kind: Vec<String>,
    /// Its `required-features` (empty when it has none).
    pub(crate) required_features: Vec<String>,
    /// Absolute path of its root source file (what identifies it in cargo's JSON messages).
    pub(crate) src_path: String,
}

impl Target {
    /// Whether it is a target of this kind (`test`, `example`, ...).
    pub(crate) fn is(&self, kind: &str) -> bool {
        self.kind.iter().any(|k| k == kind)
    }

    /// A required feature that `cargo xtask test` never turns on (see `NOT_TESTED`).
    fn untested_feature(&self) -> Option<&str> {
        self.required_features
            .iter()
            .map(String::as_str)
            .find(|f| NOT_TESTED.contains(&(self.package.as_str(), *f)))
    }

    /// Whether `cargo xtask test` covers it.
    fn in_tests(&self) -> bool {
        !NO_TESTS.contains(&self.package.as_str()) && self.untested_feature().is_none()
    }
}

/// The targets of every workspace member: `cargo metadata --format-version 1 --no-deps`.
pub(crate) fn workspace_targets() -> Result<Vec<Target>> {
    let mut c = cargo();
    c.args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit());
    let out = c
        .output()
        .map_err(|e| format!("cargo metadata: cannot start: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata: failed ({})", out.status));
    }
    let text = String::from_utf8(out.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    parse_targets(&text).map_err(|e| format!("cargo metadata: {e}"))
}

/// The targets of the packages in a `cargo metadata --format-version 1` document.
fn parse_targets(metadata: &str) -> Result<Vec<Target>> {
    let json: Value = serde_json::from_str(metadata).map_err(|e| e.to_string())?;
    let packages = items(json.get("packages"));
    if packages.is_empty() {
        return Err("no packages in its output".into());
    }
    let mut out = Vec::new();
    for package in packages {
        let name = text(package, "name").ok_or("a package without a name")?;
        for t in items(package.get("targets")) {
            out.push(Target {
                package: name.to_owned(),
                name: text(t, "name")
                    .ok_or_else(|| format!("a target of {name} without a name"))?
                    .to_owned(),
                kind: strings(t.get("kind")),
                required_features: strings(t.get("required-features")),
                src_path: text(t, "src_path").unwrap_or_default().to_owned(),
            });
        }
    }
    Ok(out)
}

/// The string value of `key` in an object.
fn text<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

/// The items of an array (none when absent or not an array).
pub(crate) fn items(array: Option<&Value>) -> &[Value] {
    array
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The strings of an array (none when absent).
fn strings(array: Option<&Value>) -> Vec<String> {
    items(array)
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// The integration test targets (`tests/*.rs`) that `cargo xtask test` must run.
fn expected_tests(targets: &[Target]) -> Vec<&Target> {
    targets
        .iter()
        .filter(|t| t.is("test") && t.in_tests())
        .collect()
}

/// The targets of one package that have `required-features`, and the union of those.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Gated {
    /// The package.
    pub(crate) package: String,
    /// The union of their required features, sorted.
    pub(crate) features: Vec<String>,
    /// (`--test` / `--example` / `--bench`, target name), in manifest order.
    pub(crate) targets: Vec<(&'static str, String)>,
}

impl Gated {
    /// `-p PACKAGE --features A,B --test X --example Y ...`, for `cargo test` or `cargo clippy`.
    pub(crate) fn args(&self) -> Vec<String> {
        let mut args = vec![
            "-p".to_owned(),
            self.package.clone(),
            "--features".to_owned(),
            self.features.join(","),
        ];
        for (flag, name) in &self.targets {
            args.push((*flag).to_owned());
            args.push(name.clone());
        }
        args
    }

    /// What a run over these targets is, for the log: `tiercache --features cluster
    /// (cluster_backend)`.
    pub(crate) fn describe(&self) -> String {
        let names: Vec<&str> = self.targets.iter().map(|(_, n)| n.as_str()).collect();
        format!(
            "-p {} --features {} ({})",
            self.package,
            self.features.join(","),
            names.join(", ")
        )
    }
}

/// Per package, its targets of the given kinds (`test`, `example`, `bench`) that have
/// `required-features`, leaving out the packages and features `cargo xtask test` never
/// turns on (`NO_TESTS`, `NOT_TESTED`).
pub(crate) fn gated(targets: &[Target], kinds: &[&str]) -> Vec<Gated> {
    let mut out: Vec<Gated> = Vec::new();
    for t in targets
        .iter()
        .filter(|t| !t.required_features.is_empty() && t.in_tests())
    {
        let Some(flag) = kinds.iter().find(|k| t.is(k)).and_then(|k| match *k {
            "test" => Some("--test"),
            "example" => Some("--example"),
            "bench" => Some("--bench"),
            _ => None,
        }) else {
            continue;
        };
        let index = match out.iter().position(|g| g.package == t.package) {
            Some(i) => i,
            None => {
                out.push(Gated {
                    package: t.package.clone(),
                    ..Gated::default()
                });
                out.len() - 1
            }
        };
        let g = &mut out[index];
        g.targets.push((flag, t.name.clone()));
        g.features.extend(t.required_features.iter().cloned());
        g.features.sort();
        g.features.dedup();
    }
    out
}

/// What the `cargo test` runs built and ran.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    /// (source file, executable file name) of every test executable built.
    built: Vec<(String, String)>,
    /// File names of the test executables cargo ran.
    ran: Vec<String>,
}

impl Runs {
    /// `cargo test ARGS`: built first with `--no-run` (to learn which executable is which
    /// target), then run; stderr is echoed as it comes.
    pub(crate) fn test(&mut self, args: &[String], what: &str) -> Result<()> {
        let mut build = cargo();
        build
            .arg("test")
            .args(args)
            .args(["--no-run", "--message-format=json-render-diagnostics"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        eprintln!("xtask: {what}: build");
        let out = build
            .output()
            .map_err(|e| format!("{what}: cannot start: {e}"))?;
        if !out.status.success() {
            return Err(format!("{what}: build failed ({})", out.status));
        }
        self.built
            .extend(built_executables(&String::from_utf8_lossy(&out.stdout)));
        let mut run = cargo();
        run.arg("test").args(args);
        if std::io::stderr().is_terminal() {
            run.arg("--color=always");
        }
        self.ran.extend(run_collecting(run, what)?);
        Ok(())
    }

    /// The test targets with `required-features` that the runs so far did not build, per
    /// package (one that another member's features turned on is in the workspace run
    /// already).
    pub(crate) fn gated_left_out(&self, targets: &[Target]) -> Vec<Gated> {
        let left_out: Vec<Target> = targets
            .iter()
            .filter(|t| !self.built.iter().any(|(src, _)| *src == t.src_path))
            .cloned()
            .collect();
        gated(&left_out, &["test"])
    }

    /// An error naming every test target that `cargo metadata` lists and no run executed.
    pub(crate) fn check(&self, targets: &[Target]) -> Result<()> {
        let expected = expected_tests(targets);
        let missing = skipped(&expected, self);
        for t in targets.iter().filter(|t| t.is("test")) {
            if let Some(f) = t.untested_feature() {
                eprintln!(
                    "xtask: not run by design: test `{}` of {} (feature `{f}`)",
                    t.name, t.package
                );
            }
        }
        if missing.is_empty() {
            eprintln!("xtask: all {} integration test targets ran", expected.len());
            return Ok(());
        }
        let list: Vec<String> = missing
            .iter()
            .map(|t| {
                let needs = if t.required_features.is_empty() {
                    String::new()
                } else {
                    format!(", required-features {}", t.required_features.join(","))
                };
                format!(
                    "\n    test `{}` of {} ({}{needs})",
                    t.name, t.package, t.src_path
                )
            })
            .collect();
        Err(format!(
            "{} test target(s) were SKIPPED (never ran):{}\n  \
             (`cargo xtask test` runs each package's tests that have required-features with \
             `--features`; see xtask/src/targets.rs)",
            missing.len(),
            list.concat()
        ))
    }
}

/// (source file, executable file name) of every artifact with an executable in the JSON
/// lines of `cargo test --no-run --message-format=json-render-diagnostics`.
fn built_executables(json_lines: &str) -> Vec<(String, String)> {
    json_lines
        .lines()
        .filter(|l| l.contains("\"executable\":\""))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| text(m, "reason") == Some("compiler-artifact"))
        .filter_map(|m| {
            let src = m.get("target").and_then(|t| text(t, "src_path"))?;
            let exe = file_name(text(&m, "executable")?)?;
            Some((src.to_owned(), exe))
        })
        .collect()
}

/// The last component of a path.
fn file_name(path: &str) -> Option<String> {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
}

/// Runs `cmd` (a `cargo test`) with its stderr echoed line by line, and returns the file
/// names of the executables it ran (its `Running` lines).
fn run_collecting(mut cmd: Command, what: &str) -> Result<Vec<String>> {
    eprintln!("xtask: {what}");
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let mut ran = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        let mut reader = BufReader::new(stderr);
        let mut echo = std::io::stderr();
        let mut line = Vec::new();
        // Bytes, not `lines()`: a test may write something that is not UTF-8.
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let _ = echo.write_all(&line);
            ran.extend(running_executable(&String::from_utf8_lossy(&line)));
            line.clear();
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("{what}: cannot wait: {e}"))?;
    if status.success() {
        Ok(ran)
    } else {
        Err(format!("{what}: failed ({status})"))
    }
}

/// The executable's file name in a line of `cargo test`'s stderr such as
/// `     Running tests/tls.rs (target/debug/deps/tls-0123abcd)`, or, verbose,
/// ``     Running `/…/target/debug/deps/tls-0123abcd` `` (colours are ignored).
fn running_executable(line: &str) -> Option<String> {
    let line = strip_ansi(line);
    let rest = line.trim().strip_prefix("Running ")?;
    let path = match rest.strip_suffix(')') {
        Some(inner) => inner.rsplit_once('(')?.1,
        None => rest
            .trim_matches('`')
            .split_whitespace()
            .find(|word| !word.contains('='))?,
    };
    file_name(path.trim_matches('`'))
}

/// `line` without ANSI escape sequences (`CARGO_TERM_COLOR=always`, `--color=always`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in @..~
            if chars.next() == Some('[') {
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The expected test targets that no run executed: a target ran when an executable built
/// from its source file is among those cargo ran.
fn skipped<'a>(expected: &[&'a Target], runs: &Runs) -> Vec<&'a Target> {
    expected
        .iter()
        .copied()
        .filter(|t| {
            !runs
                .built
                .iter()
                .any(|(src, exe)| *src == t.src_path && runs.ran.contains(exe))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trimmed `cargo metadata --format-version 1 --no-deps` of a workspace like this one.
    const METADATA: &str = r#"{"packages":[
      {"name":"cache-redis","version":"0.1.0","id":"path+file:///w/crates/cache-redis#0.1.0",
       "features":{"default":[],"tls":["redis/tokio-rustls-comp"]},"targets":[
        {"kind":["lib"],"crate_types":["lib"],"name":"cache_redis","src_path":"/w/crates/cache-redis/src/lib.rs","edition":"2021","doc":true,"doctest":true,"test":true},
        {"kind":["test"],"crate_types":["bin"],"name":"redis_store","src_path":"/w/crates/cache-redis/tests/redis_store.rs","edition":"2021","doc":false,"doctest":false,"test":true},
        {"kind":["test"],"crate_types":["bin"],"required-features":["tls"],"name":"tls","src_path":"/w/crates/cache-redis/tests/tls.rs","edition":"2021","doc":false,"doctest":false,"test":true}],
       "metadata":null,"publish":null},
      {"name":"tiercache","features":{},"targets":[
        {"kind":["example"],"crate_types":["bin"],"required-features":["cluster"],"name":"cluster","src_path":"/w/crates/cache-tiered/examples/cluster.rs","test":false},
        {"kind":["example"],"crate_types":["bin"],"name":"quickstart","src_path":"/w/crates/cache-tiered/examples/quickstart.rs","test":false},
        {"kind":["test"],"crate_types":["bin"],"required-features":["cluster"],"name":"cluster_backend","src_path":"/w/crates/cache-tiered/tests/cluster_backend.rs","test":true},
        {"kind":["test"],"crate_types":["bin"],"required-features":["redis","cluster"],"name":"both","src_path":"/w/crates/cache-tiered/tests/both.rs","test":true},
        {"kind":["test"],"crate_types":["bin"],"name":"coherence","src_path":"/w/crates/cache-tiered/tests/coherence.rs","test":true}]},
      {"name":"cache-testkit","features":{},"targets":[
        {"kind":["test"],"crate_types":["bin"],"name":"cluster","src_path":"/w/crates/cache-testkit/tests/cluster.rs","test":true}]},
      {"name":"benches","features":{"peers":[]},"targets":[
        {"kind":["bench"],"crate_types":["bin"],"required-features":["peers"],"name":"l1_hit","src_path":"/w/benches/benches/l1_hit.rs","test":false},
        {"kind":["test"],"crate_types":["bin"],"required-features":["peers"],"name":"vs_peers","src_path":"/w/benches/tests/vs_peers.rs","test":true}]},
      {"name":"demo","features":{},"targets":[
        {"kind":["bin"],"crate_types":["bin"],"name":"demo","src_path":"/w/demo/src/main.rs","test":true},
        {"kind":["test"],"crate_types":["bin"],"required-features":["x"],"name":"demo_t","src_path":"/w/demo/tests/demo_t.rs","test":true}]}
    ],"workspace_members":[],"resolve":null,"target_directory":"/w/target","version":1,"workspace_root":"/w"}"#;

    fn targets() -> Vec<Target> {
        parse_targets(METADATA).unwrap_or_default()
    }

    fn artifact(src: &str, exe: &str) -> String {
        format!(
            r#"{{"reason":"compiler-artifact","package_id":"p","manifest_path":"/w/Cargo.toml","target":{{"kind":["test"],"crate_types":["bin"],"name":"n","src_path":"{src}","test":true}},"profile":{{"test":true}},"features":[],"filenames":["{exe}"],"executable":"{exe}","fresh":true}}"#
        )
    }

    /// The JSON lines of the builds of every test target of `METADATA` that runs.
    fn all_built() -> String {
        [
            artifact(
                "/w/crates/cache-redis/tests/redis_store.rs",
                "/w/target/debug/deps/redis_store-11",
            ),
            artifact(
                "/w/crates/cache-redis/tests/tls.rs",
                "/w/target/debug/deps/tls-22",
            ),
            artifact(
                "/w/crates/cache-tiered/tests/cluster_backend.rs",
                "/w/target/debug/deps/cluster_backend-33",
            ),
            artifact(
                "/w/crates/cache-tiered/tests/both.rs",
                "/w/target/debug/deps/both-44",
            ),
            artifact(
                "/w/crates/cache-tiered/tests/coherence.rs",
                "/w/target/debug/deps/coherence-55",
            ),
            artifact(
                "/w/crates/cache-testkit/tests/cluster.rs",
                "/w/target/debug/deps/cluster-66",
            ),
            r#"{"reason":"build-script-executed","package_id":"p"}"#.to_owned(),
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"x","src_path":"/w/x.rs"},"executable":null}"#.to_owned(),
            r#"{"reason":"build-finished","success":true}"#.to_owned(),
        ]
        .join("\n")
    }

    fn runs(stderr: &str) -> Runs {
        Runs {
            built: built_executables(&all_built()),
            ran: stderr.lines().filter_map(running_executable).collect(),
        }
    }

    const ALL_RAN: &str = "   Compiling tiercache v0.1.0 (/w/crates/cache-tiered)
    Finished `test` profile [unoptimized + debuginfo] target(s) in 0.08s
     Running unittests src/lib.rs (target/debug/deps/cache_redis-00)
     Running tests/redis_store.rs (target/debug/deps/redis_store-11)
     Running tests/coherence.rs (target/debug/deps/coherence-55)
\u{1b}[1m\u{1b}[32m     Running\u{1b}[0m tests/cluster.rs (target/debug/deps/cluster-66)
     Running `/w/target/debug/deps/tls-22 --nocapture`
     Running tests/cluster_backend.rs (target/debug/deps/cluster_backend-33)
     Running tests/both.rs (target/debug/deps/both-44)
   Doc-tests cache_redis";

    #[test]
    fn reads_the_targets_from_cargo_metadata() {
        let t = targets();
        assert_eq!(t.len(), 13);
        let tls = t.iter().find(|t| t.name == "tls");
        assert_eq!(
            tls,
            Some(&Target {
                package: "cache-redis".into(),
                name: "tls".into(),
                kind: vec!["test".into()],
                required_features: vec!["tls".into()],
                src_path: "/w/crates/cache-redis/tests/tls.rs".into(),
            })
        );
        assert!(parse_targets(r#"{"packages":[]}"#).is_err());
        assert!(parse_targets("not json").is_err());
    }

    #[test]
    fn expects_every_test_but_the_demo_and_the_peers() {
        let t = targets();
        let names: Vec<&str> = expected_tests(&t).iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "redis_store",
                "tls",
                "cluster_backend",
                "both",
                "coherence",
                "cluster"
            ]
        );
    }

    #[test]
    fn one_gated_run_per_package_with_the_union_of_features() {
        let t = targets();
        let tests = gated(&t, &["test"]);
        assert_eq!(
            tests,
            vec![
                Gated {
                    package: "cache-redis".into(),
                    features: vec!["tls".into()],
                    targets: vec![("--test", "tls".into())],
                },
                Gated {
                    package: "tiercache".into(),
                    features: vec!["cluster".into(), "redis".into()],
                    targets: vec![
                        ("--test", "cluster_backend".into()),
                        ("--test", "both".into())
                    ],
                },
            ]
        );
        assert_eq!(
            tests[1].args().join(" "),
            "-p tiercache --features cluster,redis --test cluster_backend --test both"
        );
        let lint = gated(&t, &["test", "example", "bench"]);
        assert_eq!(lint.len(), 2);
        assert_eq!(
            lint[1].targets,
            vec![
                ("--example", "cluster".to_owned()),
                ("--test", "cluster_backend".to_owned()),
                ("--test", "both".to_owned())
            ]
        );
    }

    #[test]
    fn a_gated_target_already_built_is_not_run_again() {
        let t = targets();
        let mut r = runs("");
        r.built.retain(|(src, _)| !src.ends_with("tls.rs"));
        assert_eq!(
            r.gated_left_out(&t),
            vec![Gated {
                package: "cache-redis".into(),
                features: vec!["tls".into()],
                targets: vec![("--test", "tls".into())],
            }]
        );
        r.built.clear();
        assert_eq!(r.gated_left_out(&t), gated(&t, &["test"]));
    }

    #[test]
    fn parses_running_lines() {
        assert_eq!(
            running_executable("     Running tests/tls.rs (target/debug/deps/tls-0a1b)\n"),
            Some("tls-0a1b".into())
        );
        assert_eq!(
            running_executable("     Running unittests src/lib.rs (target/debug/deps/a_b-9)"),
            Some("a_b-9".into())
        );
        assert_eq!(
            running_executable("     Running `/w/target/debug/deps/tls-0a1b`"),
            Some("tls-0a1b".into())
        );
        assert_eq!(
            running_executable("\u{1b}[1m\u{1b}[32m     Running\u{1b}[0m tests/x.rs (t/x-1)"),
            Some("x-1".into())
        );
        assert_eq!(running_executable("test running ... ok"), None);
        assert_eq!(running_executable("   Compiling tls v0.1.0"), None);
    }

    #[test]
    fn nothing_is_skipped_when_every_target_ran() {
        let t = targets();
        let r = runs(ALL_RAN);
        assert_eq!(r.built.len(), 6);
        assert!(skipped(&expected_tests(&t), &r).is_empty());
        assert_eq!(r.check(&t), Ok(()));
    }

    #[test]
    fn a_gated_target_that_did_not_run_is_named() {
        let t = targets();
        // As before: the plain workspace run only, the tls and cluster tests left out.
        let stderr: String = ALL_RAN
            .lines()
            .filter(|l| !l.contains("tls-22") && !l.contains("cluster_backend"))
            .collect::<Vec<_>>()
            .join("\n");
        let r = runs(&stderr);
        let missing: Vec<&str> = skipped(&expected_tests(&t), &r)
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(missing, ["tls", "cluster_backend"]);
        let err = r.check(&t).err().unwrap_or_default();
        assert!(err.contains("2 test target(s) were SKIPPED"), "{err}");
        assert!(
            err.contains("test `tls` of cache-redis (/w/crates/cache-redis/tests/tls.rs, required-features tls)"),
            "{err}"
        );
        assert!(err.contains("test `cluster_backend` of tiercache"), "{err}");
    }

    #[test]
    fn a_target_built_but_not_run_or_never_built_is_skipped() {
        let t = targets();
        // Same file name in another package: identified by its source file, not its name.
        let mut r = runs(ALL_RAN);
        r.built
            .retain(|(src, _)| src != "/w/crates/cache-testkit/tests/cluster.rs");
        let missing: Vec<&str> = skipped(&expected_tests(&t), &r)
            .iter()
            .map(|t| t.package.as_str())
            .collect();
        assert_eq!(missing, ["cache-testkit"]);
        let r = runs("");
        assert_eq!(skipped(&expected_tests(&t), &r).len(), 6);
    }
}
