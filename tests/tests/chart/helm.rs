//! Driving Helm: `tests/python/helm_render.py` runs Helm's Go SDK
//! (helm-python-sdk) to lint, render and load the chart, and prints JSON.
//! Loading Helm's library takes about half a second, so tests that render
//! many variants send them as one batch.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use goaway_tests::{python, repo_root, require_python_module};
use serde_json::Value;

use crate::rendered::Rendered;
use crate::{NAMESPACE, RELEASE};

pub(crate) fn chart_dir() -> String {
    repo_root().join("charts/goaway").display().to_string()
}

/// Runs `helm_render.py args` (with `stdin` for a batch) and returns its
/// JSON; Helm errors come back as `{"error": {"kind", "message"}}`.
fn script(args: &[&str], stdin: Option<String>) -> Result<Value> {
    require_python_module("helm_python", "helm-python-sdk")?;
    let root = repo_root();
    let mut child = Command::new(python())
        .arg(root.join("tests/python/helm_render.py"))
        .args(args)
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tests/python/helm_render.py")?;
    let mut input = child.stdin.take().context("stdin")?;
    input.write_all(stdin.unwrap_or_default().as_bytes())?;
    drop(input);
    let out = child.wait_with_output()?;
    if !matches!(out.status.code(), Some(0 | 1)) {
        bail!(
            "helm_render.py {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8(out.stdout)?;
    serde_json::from_str(&stdout).with_context(|| format!("helm_render.py printed {stdout:?}"))
}

/// Runs each argument list in one Helm process.
fn batch(commands: Vec<Vec<String>>) -> Vec<Value> {
    let n = commands.len();
    let input = serde_json::to_string(&commands).expect("serializes");
    let out = script(&["batch"], Some(input)).unwrap();
    let results = out.as_array().cloned().expect("a list of results");
    assert_eq!(results.len(), n);
    results
}

pub(crate) fn render_args(release: &str, namespace: &str, values: &str) -> Vec<String> {
    [
        "render",
        &chart_dir(),
        "--name",
        release,
        "--namespace",
        namespace,
        "--values-yaml",
        values,
    ]
    .map(String::from)
    .to_vec()
}

fn rendered(release: &str, namespace: &str, values: &str, out: &Value) -> Rendered {
    if let Some(error) = out.get("error") {
        panic!("helm rejected values {values:?}: {error}");
    }
    Rendered::parse(release, namespace, &out["manifests"])
}

/// `helm template` as release `goaway` in `goaway-system` with `values`.
pub(crate) fn render(values: &str) -> Rendered {
    render_as(RELEASE, NAMESPACE, values)
}

pub(crate) fn render_as(release: &str, namespace: &str, values: &str) -> Rendered {
    render_all(&[(release, namespace, values)]).remove(0)
}

/// Several `helm template`s: (release, namespace, values) each.
pub(crate) fn render_all(cases: &[(&str, &str, &str)]) -> Vec<Rendered> {
    let commands = cases
        .iter()
        .map(|(release, ns, values)| render_args(release, ns, values))
        .collect();
    cases
        .iter()
        .zip(batch(commands))
        .map(|((release, ns, values), out)| rendered(release, ns, values, &out))
        .collect()
}

/// `helm template` as `goaway` for each of `values`: the render, or
/// Helm's error message when it refuses the values.
pub(crate) fn try_render_all(values: &[&str]) -> Vec<Result<Rendered, String>> {
    values
        .iter()
        .zip(batch_as_goaway(values))
        .map(|(values, out)| match out.get("error") {
            Some(error) => Err(format!("{values}: {error}")),
            None => Ok(Rendered::parse(RELEASE, NAMESPACE, &out["manifests"])),
        })
        .collect()
}

/// One `helm template` per values text, as release `goaway` in
/// `goaway-system`: Helm's output for each.
fn batch_as_goaway(values: &[&str]) -> Vec<Value> {
    batch(
        values
            .iter()
            .map(|v| render_args(RELEASE, NAMESPACE, v))
            .collect(),
    )
}

/// The Helm error for `values`: (error type, message).
pub(crate) fn render_error(values: &str) -> (String, String) {
    render_errors(&[values]).remove(0)
}

/// The Helm error for each of `values`, rendered as `goaway`.
pub(crate) fn render_errors(values: &[&str]) -> Vec<(String, String)> {
    values
        .iter()
        .zip(batch_as_goaway(values))
        .map(|(values, out)| {
            let Some(error) = out.get("error") else {
                panic!("helm accepted invalid values {values:?}");
            };
            let field = |k: &str| error[k].as_str().unwrap_or_default().to_string();
            (field("kind"), field("message"))
        })
        .collect()
}

/// `helm lint --strict` for each (values, Kubernetes version).
pub(crate) fn lint_all(cases: &[(&str, Option<&str>)]) -> Vec<Value> {
    let commands = cases
        .iter()
        .map(|(values, kube)| {
            let mut args = ["lint", &chart_dir(), "--namespace", NAMESPACE]
                .map(String::from)
                .to_vec();
            args.extend(["--values-yaml".into(), values.to_string()]);
            if let Some(v) = kube {
                args.extend(["--kube-version".into(), v.to_string()]);
            }
            args
        })
        .collect();
    batch(commands)
}

/// The chart's metadata, default values and CRDs as Helm loads them.
pub(crate) fn show() -> Value {
    script(&["show", &chart_dir()], None).unwrap()
}
