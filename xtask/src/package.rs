//! `cargo xtask package` and `cargo xtask features`: the workspace as crates.io will see it.
//!
//! - **package**: one `cargo package --allow-dirty -p A -p B ...` over every publishable
//!   member (no `publish = false`), listed in dependency order. Cargo packages unpublished
//!   workspace dependencies together (a local registry overlay), and **verifies** each
//!   tarball: it unpacks it and builds its library alone, so a file left out of the package,
//!   a dependency without a version or a feature a crate forgot to turn on fails here and not
//!   at `cargo publish`. It builds in a target directory of its own
//!   (`target/xtask-package`) and first removes what earlier runs built of the members:
//!   cargo would otherwise verify against the `0.1.0` of an earlier run (see
//!   `forget_earlier_runs`). Verified, because it is affordable: measured on the 2-core
//!   machine while two other builds shared the cores, 57 s warm (the ten crates rebuilt,
//!   their dependencies not) and 155 s from an empty target directory, under the 3 minutes
//!   that would have made it `--no-verify` for most crates.
//!   `--allow-dirty`: it checks the working tree as it is, committed or not.
//! - **features**: every publishable library with no default features, then with each of
//!   its features alone (`--no-default-features --features X`), as `cargo rustc --lib
//!   --profile check ... -- -D warnings` (a `cargo check` of that crate with its warnings
//!   denied; dependencies keep cargo's lint cap). A combination passes when it builds, or when
//!   it is refused only by `compile_error!` (an error without a rustc error code, such as
//!   "pick a codec feature"), never by an accidental error (`error[E...]`). A package that
//!   needs one feature of a group (`ONE_OF`, empty today: the facade builds without a codec,
//!   its `Cache` alias then has no default codec) has its other features checked together
//!   with the first of that group. Measured (29 combinations): 15-25 s
//!   warm; from an empty target directory 70 s on an idle machine, 234 s while two other
//!   builds shared the 2 cores. `cargo check` artifacts are not those of `cargo test`, so CI
//!   pays the cold figure (31 combinations, 87 s with some of it warm, 2026-12-01). Part
//!   of `cargo xtask test`, before `package`: see `docs/compatibility.md`.
//!
//! No cargo-hack: the combinations come from `cargo metadata`, one `cargo` call each.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use serde_json::Value;

use crate::targets::items;
use crate::{cargo, run, Result};

/// Packages that need one feature out of a group to build: their other features are
/// checked together with the first of the group, and the combination with none of them must
/// build or be refused by `compile_error!`.
const ONE_OF: &[(&str, &[&str])] = &[];

/// A publishable workspace member, as `cargo metadata` describes it.
#[derive(Debug, Clone, PartialEq)]
struct Member {
    name: String,
    version: String,
    /// Its features, `default` left out, sorted (cargo metadata sorts them).
    features: Vec<String>,
    /// Whether it has a library target.
    has_lib: bool,
    /// The members it needs on crates.io first: its dependencies of any kind that carry a
    /// version (an unversioned path dev-dependency is dropped by `cargo package`).
    needs: Vec<String>,
}

/// The publishable members in dependency order, and the target directory.
fn publishable() -> Result<(Vec<Member>, PathBuf)> {
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
    let (members, target) = parse_members(&text).map_err(|e| format!("cargo metadata: {e}"))?;
    Ok((dependency_order(members)?, PathBuf::from(target)))
}

/// The publishable members of a `cargo metadata --format-version 1 --no-deps` document (a
/// `publish` of `null` or a non-empty list of registries), and its `target_directory`.
fn parse_members(metadata: &str) -> Result<(Vec<Member>, String)> {
    let json: Value = serde_json::from_str(metadata).map_err(|e| e.to_string())?;
    let target = json
        .get("target_directory")
        .and_then(Value::as_str)
        .ok_or("no target_directory")?
        .to_owned();
    let packages = items(json.get("packages"));
    let names: Vec<&str> = packages
        .iter()
        .filter_map(|p| p.get("name").and_then(Value::as_str))
        .collect();
    let mut out = Vec::new();
    for p in packages {
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a package without a name")?;
        if matches!(p.get("publish"), Some(Value::Array(registries)) if registries.is_empty()) {
            continue;
        }
        let features = match p.get("features") {
            Some(Value::Object(f)) => f.keys().filter(|k| *k != "default").cloned().collect(),
            _ => Vec::new(),
        };
        let has_lib = items(p.get("targets")).iter().any(|t| {
            items(t.get("kind"))
                .iter()
                .any(|k| k.as_str() == Some("lib"))
        });
        let mut needs: Vec<String> = items(p.get("dependencies"))
            .iter()
            .filter(|d| d.get("req").and_then(Value::as_str) != Some("*"))
            .filter_map(|d| d.get("name").and_then(Value::as_str))
            .filter(|d| *d != name && names.contains(d))
            .map(str::to_owned)
            .collect();
        needs.sort();
        needs.dedup();
        out.push(Member {
            name: name.to_owned(),
            version: p
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            features,
            has_lib,
            needs,
        });
    }
    Ok((out, target))
}

/// The members ordered so that each comes after the members it needs (ties keep the
/// manifest order); a member needing one that is not publishable is an error.
fn dependency_order(mut left: Vec<Member>) -> Result<Vec<Member>> {
    let all: Vec<String> = left.iter().map(|m| m.name.clone()).collect();
    for m in &left {
        if let Some(n) = m.needs.iter().find(|n| !all.contains(n)) {
            return Err(format!(
                "{} depends on {n} with a version, but {n} is not publishable (publish = false)",
                m.name
            ));
        }
    }
    let mut done: Vec<Member> = Vec::new();
    while !left.is_empty() {
        let Some(i) = left
            .iter()
            .position(|m| m.needs.iter().all(|n| done.iter().any(|d| &d.name == n)))
        else {
            let names: Vec<&str> = left.iter().map(|m| m.name.as_str()).collect();
            return Err(format!("a dependency cycle among {}", names.join(", ")));
        };
        done.push(left.remove(i));
    }
    Ok(done)
}

/// Where `cargo xtask package` builds: a target directory of its own, because it has to
/// delete what earlier runs built of the workspace's crates (see `forget_earlier_runs`).
const PACKAGE_TARGET: &str = "xtask-package";

/// Make the next verification build the workspace's crates from the tarballs just made.
///
/// Verifying a crate that depends on another member builds that member as a registry crate
/// from cargo's temporary local registry. Cargo treats a registry crate of a given version as
/// immutable: it keeps the sources it unpacked (`$CARGO_HOME/registry/src/-<hash>/NAME-VERSION`,
/// one folder per local registry) and the artifacts it built, and reuses both for the same
/// version after the code changed. Measured here: after a commit that added
/// `cache_core::CallOptions`, the verification of the facade failed with `unresolved
/// imports cache_core::CallOptions` against the `cache-core 0.1.0` of an earlier run. So:
/// the unpacked sources of the members (in the local registries only, the folders whose
/// name starts with `-`) are removed, and `cargo clean -p` removes the members' artifacts
/// from this step's own target directory (not the one the tests use).
fn forget_earlier_runs(members: &[Member], target: &Path) -> Result<()> {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let sources = home.join("registry").join("src");
    if let Ok(registries) = fs::read_dir(&sources) {
        for registry in registries.flatten() {
            if !registry.file_name().to_string_lossy().starts_with('-') {
                continue;
            }
            for m in members {
                let unpacked = registry.path().join(format!("{}-{}", m.name, m.version));
                if unpacked.is_dir() {
                    fs::remove_dir_all(&unpacked)
                        .map_err(|e| format!("cannot remove {}: {e}", unpacked.display()))?;
                }
            }
        }
    }
    let mut clean = cargo();
    clean.args(["clean", "--quiet", "--target-dir"]).arg(target);
    for m in members {
        clean.args(["-p", &m.name]);
    }
    run(
        clean,
        "cargo clean -p <the members> (the package step's target directory)",
    )
}

/// `cargo xtask package`: every publishable crate packaged and verified, in dependency order.
pub(crate) fn package() -> Result<()> {
    let (members, target) = publishable()?;
    let target = target.join(PACKAGE_TARGET);
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    let started = Instant::now();
    forget_earlier_runs(&members, &target)?;
    let mut c = cargo();
    c.args(["package", "--allow-dirty", "--target-dir"])
        .arg(&target);
    for m in &members {
        c.args(["-p", &m.name]);
    }
    run(
        c,
        &format!("cargo package (verified): {}", names.join(", ")),
    )?;
    let missing: Vec<String> = members
        .iter()
        .map(|m| format!("{}-{}.crate", m.name, m.version))
        .filter(|f| !target.join("package").join(f).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "cargo package: no {} in {}",
            missing.join(", "),
            target.join("package").display()
        ));
    }
    eprintln!(
        "xtask: packaged and verified {} crates in {:.0?} ({}): {}",
        members.len(),
        started.elapsed(),
        target.join("package").display(),
        names.join(", ")
    );
    Ok(())
}

/// The feature sets checked for one member: none, then each feature alone (with the first
/// feature of its `ONE_OF` group when it has one).
fn combinations(m: &Member) -> Vec<Vec<String>> {
    let group: &[&str] = ONE_OF
        .iter()
        .find(|(p, _)| *p == m.name)
        .map_or(&[], |(_, g)| g);
    combinations_in(m, group)
}

/// [`combinations`] with `group` as the member's `ONE_OF` group.
fn combinations_in(m: &Member, group: &[&str]) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new()];
    for f in &m.features {
        let mut set = vec![f.clone()];
        if let Some(first) = group.first() {
            if !group.contains(&f.as_str()) {
                set.push((*first).to_owned());
            }
        }
        out.push(set);
    }
    out
}

/// How a check ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Built,
    /// Refused by `compile_error!` only: its messages.
    Refused(Vec<String>),
    /// Any other failure: the rendered errors (or cargo's stderr when rustc said nothing).
    Failed(Vec<String>),
}

/// Classify a check from its exit and its `--message-format=json` output: a refusal is a
/// failure whose every rustc error has no error code and points at a `compile_error!`
/// (an error from `-D warnings` carries its lint's name as its code).
fn outcome(success: bool, stdout: &str, stderr: &str) -> Outcome {
    if success {
        return Outcome::Built;
    }
    let mut refusals = Vec::new();
    let mut others = Vec::new();
    for line in stdout
        .lines()
        .filter(|l| l.contains("\"compiler-message\""))
    {
        let Ok(json) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(message) = json.get("message") else {
            continue;
        };
        if message.get("level").and_then(Value::as_str) != Some("error") {
            continue;
        }
        let text = message
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let without_code = !matches!(message.get("code"), Some(Value::Object(_)));
        let at_compile_error = items(message.get("spans"))
            .iter()
            .flat_map(|s| items(s.get("text")))
            .filter_map(|t| t.get("text").and_then(Value::as_str))
            .any(|t| t.contains("compile_error!"));
        if without_code && at_compile_error {
            refusals.push(text.to_owned());
        } else {
            let rendered = message
                .get("rendered")
                .and_then(Value::as_str)
                .unwrap_or(text);
            others.push(rendered.trim_end().to_owned());
        }
    }
    if others.is_empty() && !refusals.is_empty() {
        Outcome::Refused(refusals)
    } else if others.is_empty() {
        Outcome::Failed(vec![stderr.trim().to_owned()])
    } else {
        Outcome::Failed(others)
    }
}

/// `cargo xtask features`: each publishable library with no default features and with each
/// feature alone; fails listing every combination that neither builds nor is refused by a
/// `compile_error!`.
pub(crate) fn features() -> Result<()> {
    let (members, _) = publishable()?;
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut checked = 0;
    for m in members.iter().filter(|m| m.has_lib) {
        for set in combinations(m) {
            let shown = if set.is_empty() {
                format!("-p {} --no-default-features", m.name)
            } else {
                format!(
                    "-p {} --no-default-features --features {}",
                    m.name,
                    set.join(",")
                )
            };
            let mut c = cargo();
            c.args([
                "rustc",
                "--lib",
                "--profile",
                "check",
                "--message-format=json",
            ])
            .args(["-p", &m.name, "--no-default-features"]);
            if !set.is_empty() {
                c.args(["--features", &set.join(",")]);
            }
            c.args(["--", "-D", "warnings"]);
            let one = Instant::now();
            let out = c
                .output()
                .map_err(|e| format!("cargo rustc {shown}: cannot start: {e}"))?;
            checked += 1;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            match outcome(out.status.success(), &stdout, &stderr) {
                Outcome::Built => {
                    eprintln!("xtask: features: {shown}: ok ({:.1?})", one.elapsed());
                }
                Outcome::Refused(msgs) => eprintln!(
                    "xtask: features: {shown}: refused by compile_error!: {}",
                    msgs.join("; ")
                ),
                Outcome::Failed(errors) => {
                    eprintln!("xtask: features: {shown}: FAILED\n{}", errors.join("\n"));
                    let first = errors.first().and_then(|e| e.lines().next()).unwrap_or("");
                    failed.push(format!("{shown}: {first}"));
                }
            }
        }
    }
    eprintln!(
        "xtask: features: {checked} combinations checked in {:.0?}",
        started.elapsed()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} feature combination(s) do not build (an error that is not a compile_error!):\n  {}",
            failed.len(),
            failed.join("\n  ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METADATA: &str = r#"{"packages":[
      {"name":"tiercache","version":"0.1.0","publish":null,
       "features":{"cluster":["dep:cache-cluster"],"default":["msgpack"],"json":[],"msgpack":[]},
       "targets":[{"kind":["lib"],"name":"tiercache"}],
       "dependencies":[{"name":"cache-core","req":"^0.1.0","kind":null,"path":"/w/c"},
                       {"name":"cache-testkit","req":"*","kind":"dev","path":"/w/t"},
                       {"name":"serde","req":"^1","kind":null}]},
      {"name":"cache-testkit","version":"0.1.0","publish":null,"features":{},
       "targets":[{"kind":["lib"],"name":"cache_testkit"}],"dependencies":[]},
      {"name":"cache-core","version":"0.1.0","publish":null,"features":{"default":[],"lz4":[]},
       "targets":[{"kind":["lib"],"name":"cache_core"}],"dependencies":[]},
      {"name":"xtask","version":"0.1.0","publish":[],"features":{},
       "targets":[{"kind":["bin"],"name":"xtask"}],
       "dependencies":[{"name":"cache-testkit","req":"*","kind":null,"path":"/w/t"}]}
    ],"target_directory":"/w/target","workspace_root":"/w"}"#;

    fn members() -> Vec<Member> {
        parse_members(METADATA)
            .and_then(|(m, _)| dependency_order(m))
            .unwrap_or_default()
    }

    #[test]
    fn publishable_members_come_in_dependency_order() {
        let names: Vec<String> = members().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["cache-testkit", "cache-core", "tiercache"]);
        let tiercache = members().into_iter().find(|m| m.name == "tiercache");
        assert_eq!(
            tiercache.map(|m| (m.needs, m.features)),
            Some((
                vec!["cache-core".to_owned()],
                vec![
                    "cluster".to_owned(),
                    "json".to_owned(),
                    "msgpack".to_owned()
                ]
            ))
        );
    }

    #[test]
    fn a_versioned_dependency_on_an_unpublishable_member_is_an_error() {
        let m = |name: &str, needs: &[&str]| Member {
            name: name.to_owned(),
            version: "0.1.0".to_owned(),
            features: Vec::new(),
            has_lib: true,
            needs: needs.iter().map(|n| (*n).to_owned()).collect(),
        };
        assert!(dependency_order(vec![m("a", &["b"])]).is_err());
        assert!(dependency_order(vec![m("a", &["b"]), m("b", &["a"])]).is_err());
    }

    #[test]
    fn each_feature_is_checked_alone() {
        let sets: Vec<Vec<Vec<String>>> = members()
            .iter()
            .filter(|m| m.name == "tiercache")
            .map(combinations)
            .collect();
        let s = |v: &[&str]| v.iter().map(|f| (*f).to_owned()).collect::<Vec<String>>();
        // `ONE_OF` is empty today.
        assert_eq!(
            sets,
            vec![vec![s(&[]), s(&["cluster"]), s(&["json"]), s(&["msgpack"])]]
        );
    }

    #[test]
    fn a_one_of_group_joins_the_other_features() {
        let sets: Vec<Vec<Vec<String>>> = members()
            .iter()
            .filter(|m| m.name == "tiercache")
            .map(|m| combinations_in(m, &["msgpack", "json", "cbor"]))
            .collect();
        let s = |v: &[&str]| v.iter().map(|f| (*f).to_owned()).collect::<Vec<String>>();
        assert_eq!(
            sets,
            vec![vec![
                s(&[]),
                s(&["cluster", "msgpack"]),
                s(&["json"]),
                s(&["msgpack"])
            ]]
        );
    }

    /// A `compiler-message` line of `cargo --message-format=json`, trimmed.
    fn message(code: &str, text: &str, span: &str) -> String {
        format!(
            r#"{{"reason":"compiler-message","package_id":"x","message":{{"rendered":"error: {text}\n","level":"error","code":{code},"message":"{text}","spans":[{{"is_primary":true,"text":[{{"text":"{span}","highlight_start":1,"highlight_end":2}}]}}],"children":[]}}}}"#
        )
    }

    #[test]
    fn only_a_compile_error_is_a_refusal() {
        assert_eq!(outcome(true, "", "warning: x"), Outcome::Built);
        let refusal = message(
            "null",
            "enable a codec feature: json, msgpack or cbor",
            r#"compile_error!(\"enable a codec feature: json, msgpack or cbor\");"#,
        );
        let finished = r#"{"reason":"build-finished","success":false}"#;
        assert_eq!(
            outcome(false, &format!("{refusal}\n{finished}\n"), ""),
            Outcome::Refused(vec![
                "enable a codec feature: json, msgpack or cbor".to_owned()
            ])
        );
        let broken = message(
            r#"{"code":"E0425","explanation":null}"#,
            "cannot find type `DefaultCodec` in this scope",
            "pub type Cache<V, C = DefaultCodec> = cache_core::Cache<V, C>;",
        );
        assert!(matches!(outcome(false, &broken, ""), Outcome::Failed(_)));
        // `-D warnings`: the lint's name is its code.
        let lint = message(
            r#"{"code":"unused_imports","explanation":null}"#,
            "unused import: `std::fmt`",
            "use std::fmt;",
        );
        assert!(matches!(outcome(false, &lint, ""), Outcome::Failed(_)));
        // an error without a code that is not a compile_error! (a parse error, say)
        let parse = message("null", "expected item", "fn (");
        assert!(matches!(outcome(false, &parse, ""), Outcome::Failed(_)));
        let mixed = format!("{refusal}\n{broken}\n");
        assert!(matches!(outcome(false, &mixed, ""), Outcome::Failed(_)));
        assert_eq!(
            outcome(false, "", "error: package `x` does not have feature `y`"),
            Outcome::Failed(vec![
                "error: package `x` does not have feature `y`".to_owned()
            ])
        );
    }
}
