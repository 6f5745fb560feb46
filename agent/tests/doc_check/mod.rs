//! What the documentation tests (`readme.rs`, `design.rs`) share: the
//! repository's files, the binaries' own definitions of their flags and
//! environment variables (clap's, not a copy), and how a document's text
//! is searched for them.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

/// The repository's root.
pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// A file of the repository, by its path from the root.
pub(crate) fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every (command, long flag, env variable) of `cmd` and its subcommands.
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

/// Every (command, long flag, env variable) of the agent.
pub(crate) fn agent_flags() -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    args(&goaway_agent::cli::Cli::command(), &mut out);
    out
}

/// Every (command, long flag, env variable) of the agent and the operator.
pub(crate) fn binaries() -> Vec<(String, String, Option<String>)> {
    let mut out = agent_flags();
    args(&goaway_operator::cli::Cli::command(), &mut out);
    out
}

/// `GOAWAY_*` variables that no flag reads, each with the file said to
/// read (or set) it: the agent's logging set-up, what the operator sets in
/// the containers it injects, and this repository's scripts and tests.
pub(crate) const ENV_ELSEWHERE: [(&str, &str); 20] = [
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
    ("GOAWAY_KUBE_VERSION", "scripts/kube-versions"),
    ("GOAWAY_RELEASE_TARGET_DIR", "scripts/release"),
    ("GOAWAY_KUBE_REGISTRY_PORT", "scripts/kube-local"),
    ("GOAWAY_IMAGE_PROFILE", "scripts/kube-local"),
    ("GOAWAY_E2E_VALUES", "operator/tests/node_e2e.rs"),
    ("GOAWAY_E2E_CHART", "operator/tests/node_e2e.rs"),
    ("GOAWAY_E2E_CHART_VERSION", "operator/tests/node_e2e.rs"),
    ("GOAWAY_KUBE_NODE", "operator/tests/node_e2e.rs"),
    ("GOAWAY_CACHE", "scripts/build-peers"),
    ("GOAWAY_CI", "transport/src/test_util/mod.rs"),
];

/// Checks that each file of [`ENV_ELSEWHERE`] does name its variable.
pub(crate) fn check_env_elsewhere() {
    for (name, file) in ENV_ELSEWHERE {
        assert!(read(file).contains(name), "{file} does not read {name}");
    }
}

/// `GOAWAY_*` names in `text`.
pub(crate) fn env_names(text: &str) -> BTreeSet<String> {
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

/// `GOAWAY_*` names in `text` that neither a binary nor
/// [`ENV_ELSEWHERE`] reads.
pub(crate) fn unknown_env_names(text: &str) -> Vec<String> {
    let from_binaries: BTreeSet<String> = binaries()
        .into_iter()
        .filter_map(|(_, _, env)| env)
        .collect();
    env_names(text)
        .into_iter()
        .filter(|n| !from_binaries.contains(n) && !ENV_ELSEWHERE.iter().any(|(e, _)| e == n))
        .collect()
}

/// Whether `docs` names `flag` (`--admin`) as a whole: `--admin` must not
/// match `--admin-addr`.
pub(crate) fn mentions_flag(docs: &str, flag: &str) -> bool {
    docs.match_indices(flag).any(|(at, _)| {
        docs[at + flag.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
    })
}

/// A flag as a document writes it: `--name`, or `--prefix-*` for every
/// flag that starts with `--prefix-`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FlagMention {
    /// `--name`.
    Exact(String),
    /// `--prefix-*`: the prefix, with its trailing `-`.
    Prefix(String),
}

/// Every flag `text` names: `--` after a character that is not part of a
/// word or of a run of dashes (so Markdown rules and ASCII arrows are not
/// flags), then a lowercase letter.
pub(crate) fn flag_mentions(text: &str) -> BTreeSet<FlagMention> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("--") {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            continue;
        }
        let rest = &bytes[at + 2..];
        if !rest.first().is_some_and(u8::is_ascii_lowercase) {
            continue;
        }
        let len = rest
            .iter()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'-')
            .count();
        let name = &text[at..at + 2 + len];
        if name.ends_with('-') && rest.get(len) == Some(&b'*') {
            out.insert(FlagMention::Prefix(name.to_string()));
        } else {
            out.insert(FlagMention::Exact(name.trim_end_matches('-').to_string()));
        }
    }
    out
}

/// Every `.rs` file of the repository (both workspaces), build output
/// and hidden directories left out.
pub(crate) fn rust_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    walk(&path, out);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(repo(), &mut out);
    out.sort();
    out
}
