//! The README against the binaries' own parsers (clap's definitions, not
//! a copy): every `GOAWAY_*` variable the README names is one a binary
//! reads (or a script of this repository does), and every flag of the
//! agent and of the operator is documented, in the README or in the
//! chart's README.

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every (long flag, env variable) of `cmd` and its subcommands.
fn args(cmd: &clap::Command, out: &mut Vec<(String, String, Option<String>)>) {
    for arg in cmd.get_arguments() {
        if let Some(long) = arg.get_long() {
            out.push((
                cmd.get_name().to_string(),
                long.to_string(),
                arg.get_env().map(|e| e.to_string_lossy().into_owned()),
            ));
        }
    }
    // Hidden subcommands (the demo's backend processes) are internal.
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        args(sub, out);
    }
}

fn binaries() -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    args(&goaway_agent::cli::Cli::command(), &mut out);
    args(&goaway_operator::cli::Cli::command(), &mut out);
    out
}

/// `GOAWAY_*` names in `text`.
fn env_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("GOAWAY_") {
        let start = i + at;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b'_')
                .count();
        let name = text[start..end].trim_end_matches('_');
        // `GOAWAY_<FLAG>` and `GOAWAY_*` stand for the pattern.
        if name.len() > "GOAWAY_".len() {
            names.insert(name.to_string());
        }
        i = end.max(start + 1);
    }
    names
}

#[test]
fn every_goaway_variable_the_readme_names_is_read_by_something() {
    let readme = read("README.md");
    let from_binaries: BTreeSet<String> = binaries()
        .into_iter()
        .filter_map(|(_, _, env)| env)
        .collect();
    // Read by the agent's logging setup rather than a flag, set by the
    // operator in app containers, or read by this repository's scripts
    // and tests: each is checked against the file said to read it.
    let elsewhere = [
        ("GOAWAY_LOG", "agent/src/logging.rs"),
        ("GOAWAY_DRAIN_URL", "operator/src/inject/mod.rs"),
        // The downward API's pod and node IPs, set by the operator and
        // expanded into the agent's flags by the kubelet.
        ("GOAWAY_POD_IP", "operator/src/inject/sidecar.rs"),
        ("GOAWAY_HOST_IP", "operator/src/inject/sidecar.rs"),
        ("GOAWAY_KUBE_CACHE", "scripts/kube-local"),
        ("GOAWAY_KUBE_STATE", "scripts/kube-local"),
        ("GOAWAY_KUBE_APISERVER_PORT", "scripts/kube-local"),
        ("GOAWAY_KUBE_ETCD_PORT", "scripts/kube-local"),
        ("GOAWAY_KUBE_KCM_PORT", "scripts/kube-local"),
        ("GOAWAY_KUBE_NODE_IP", "scripts/kube-local"),
        ("GOAWAY_IMAGE_PROFILE", "scripts/kube-local"),
        ("GOAWAY_E2E_VALUES", "operator/tests/node_e2e.rs"),
        ("GOAWAY_KUBE_NODE", "operator/tests/node_e2e.rs"),
        ("GOAWAY_CACHE", "scripts/build-peers"),
        ("GOAWAY_CI", "transport/src/test_util.rs"),
    ];
    for (name, file) in elsewhere {
        assert!(read(file).contains(name), "{file} does not read {name}");
    }
    let unknown: Vec<String> = env_names(&readme)
        .into_iter()
        .filter(|n| !from_binaries.contains(n) && !elsewhere.iter().any(|(e, _)| e == n))
        .collect();
    assert!(
        unknown.is_empty(),
        "the README names variables nothing reads: {unknown:?}"
    );
}

#[test]
fn every_flag_of_the_binaries_is_documented() {
    let docs = read("README.md") + &read("charts/goaway/README.md");
    let undocumented: Vec<String> = binaries()
        .into_iter()
        .map(|(cmd, long, _)| (cmd, format!("--{long}")))
        .filter(|(_, flag)| flag != "--help" && flag != "--version")
        .filter(|(_, flag)| {
            // Whole flag only: `--admin` must not match `--admin-addr`.
            !docs.match_indices(flag.as_str()).any(|(at, _)| {
                docs[at + flag.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
            })
        })
        .map(|(cmd, flag)| format!("{cmd} {flag}"))
        .collect();
    assert!(
        undocumented.is_empty(),
        "flags missing from README.md and charts/goaway/README.md: {undocumented:?}"
    );
}
