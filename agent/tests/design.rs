//! The design document (docs/design.md §1) against the code, as
//! `readme.rs` holds the README to it: every flag, admin endpoint, metric and `GOAWAY_*` variable the
//! design document names exists — flags in the binaries' clap definitions,
//! endpoints answered by a running agent and the operator's routers,
//! metrics in the agent's and the operator's registries — and the agent's
//! flags, admin routes and every metric are in it. And the code's
//! citations of the document: each one names a section that exists, and none of the old citations of a specification that is
//! not in the repository is left.

mod doc_check;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use doc_check::{
    FlagMention, agent_flags, binaries, check_env_elsewhere, flag_mentions, mentions_flag, read,
    repo, rust_files, unknown_env_names,
};

/// The document's path, spelt in two halves so that this file's own
/// mentions of it are all citations.
const DESIGN: &str = concat!("docs/", "design.md");

fn design() -> String {
    read(DESIGN)
}

// ------------------------------------------------------------- flags

/// Flags the document names that belong to other programs, each with the
/// file that reads it.
const OTHER_FLAGS: [(&str, &str); 1] = [("--node", "scripts/kube-local")];

#[test]
fn every_flag_the_design_names_is_a_flag_of_a_binary() {
    for (flag, file) in OTHER_FLAGS {
        assert!(read(file).contains(flag), "{file} does not read {flag}");
    }
    let known: BTreeSet<String> = binaries()
        .into_iter()
        .map(|(_, long, _)| format!("--{long}"))
        .collect();
    let mentions = flag_mentions(&design());
    assert!(mentions.len() > 40, "too few flags found: {mentions:?}");
    let unknown: Vec<String> = mentions
        .into_iter()
        .filter(|m| match m {
            FlagMention::Exact(f) => !known.contains(f) && !OTHER_FLAGS.iter().any(|(o, _)| o == f),
            FlagMention::Prefix(p) => !known.iter().any(|f| f.starts_with(p.as_str())),
        })
        .map(|m| format!("{m:?}"))
        .collect();
    assert!(
        unknown.is_empty(),
        "{DESIGN} names flags no binary has: {unknown:?}"
    );
}

#[test]
fn every_agent_flag_is_in_the_design() {
    let doc = design();
    // Every command of the agent's, the demo's included (its hidden
    // backend process is left out).
    let missing: Vec<String> = agent_flags()
        .into_iter()
        .map(|(cmd, long, _)| (cmd, format!("--{long}")))
        .filter(|(_, flag)| flag != "--help" && flag != "--version")
        .filter(|(_, flag)| !mentions_flag(&doc, flag))
        .map(|(cmd, flag)| format!("{cmd} {flag}"))
        .collect();
    assert!(
        missing.is_empty(),
        "agent flags missing from {DESIGN}: {missing:?}"
    );
}

#[test]
fn every_goaway_variable_the_design_names_is_read_by_something() {
    check_env_elsewhere();
    let unknown = unknown_env_names(&design());
    assert!(
        unknown.is_empty(),
        "{DESIGN} names variables nothing reads: {unknown:?}"
    );
}

// ----------------------------------------------------------- metrics

/// Every metric name a registry exposes, with its type: counters by
/// their sample name (`_total`), the rest by their family name; and the
/// further names a histogram's samples have.
fn registered(open_metrics: &str) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let (mut names, mut samples) = (BTreeMap::new(), BTreeSet::new());
    for line in open_metrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        let name = match kind {
            "counter" => format!("{name}_total"),
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    samples.insert(format!("{name}{suffix}"));
                }
                name.to_string()
            }
            _ => name.to_string(),
        };
        names.insert(name, kind.to_string());
    }
    (names, samples)
}

/// The agent's and the operator's metrics, from their registries.
fn all_metrics() -> (BTreeMap<String, String>, BTreeSet<String>) {
    let agent = goaway_agent::metrics::Metrics::new(
        Arc::new(goaway_transport::Counters::default()),
        Vec::new(),
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(std::sync::atomic::AtomicU8::new(0)),
    );
    let operator = goaway_operator::metrics::Metrics::default();
    operator.sample_every_family();
    let (mut names, mut samples) = registered(&agent.encode());
    let (n, s) = registered(&operator.render());
    names.extend(n);
    samples.extend(s);
    (names, samples)
}

/// The rows of the document's metric tables: (name without its labels,
/// the type column). Rows of [`NOT_METRICS`] are another table's.
fn metric_rows(doc: &str) -> Vec<(String, String)> {
    doc.lines()
        .filter(|l| l.starts_with("| `goaway_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`');
            let name = name.split('{').next().unwrap_or(name);
            (name.to_string(), cells[2].to_string())
        })
        .filter(|(name, _)| !NOT_METRICS.iter().any(|(n, _)| n == name))
        .collect()
}

/// Names in the document that look like metrics and are JSON fields, each
/// with the file that defines it: a connection of `GET /connections` and
/// the drain's summary.
const NOT_METRICS: [(&str, &str); 3] = [
    ("goaway_reason", "agent/src/connections.rs"),
    ("goaway_after_seconds", "transport/src/control.rs"),
    ("goaway_on", "transport/src/control.rs"),
];

/// `goaway_…` names in `text` (a name is lowercase letters, digits and
/// `_`; `goaway_<P>` stands for a pattern, not a name, and a name followed
/// by `::` is a Rust path such as `goaway_transport::policy`), but those
/// of [`NOT_METRICS`].
fn metric_mentions(text: &str) -> BTreeSet<String> {
    for (name, file) in NOT_METRICS {
        assert!(
            read(file).contains(&format!("pub {name}:")),
            "{file} has no field {name}"
        );
    }
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("goaway_") {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let len = bytes[at..]
            .iter()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_')
            .count();
        let name = &text[at..at + len];
        if len > "goaway_".len()
            && !text[at + len..].starts_with("::")
            && !NOT_METRICS.iter().any(|(n, _)| *n == name)
        {
            out.insert(name.to_string());
        }
    }
    out
}

#[test]
fn every_metric_the_design_names_is_registered_and_every_registered_one_is_named() {
    let (names, samples) = all_metrics();
    assert!(names.len() > 25, "too few metrics registered: {names:?}");
    let mentioned = metric_mentions(&design());
    let unknown: Vec<&String> = mentioned
        .iter()
        .filter(|m| !names.contains_key(*m) && !samples.contains(*m))
        .collect();
    assert!(
        unknown.is_empty(),
        "{DESIGN} names metrics no registry has: {unknown:?}"
    );
    let missing: Vec<&String> = names.keys().filter(|n| !mentioned.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "metrics missing from {DESIGN}: {missing:?}"
    );
}

#[test]
fn every_metric_row_of_the_design_has_the_registered_type() {
    let (names, _) = all_metrics();
    let rows = metric_rows(&design());
    assert!(rows.len() > 25, "too few metric rows: {rows:?}");
    let wrong: Vec<String> = rows
        .iter()
        .filter(|(name, kind)| names.get(name) != Some(kind))
        .map(|(name, kind)| {
            let registered = names.get(name).map_or("nothing", String::as_str);
            format!("{name}: {kind} in the document, {registered} registered")
        })
        .collect();
    assert!(wrong.is_empty(), "{DESIGN}'s metric tables: {wrong:?}");
}

// --------------------------------------------------------- endpoints

/// An HTTP endpoint as the document names it: `GET /healthz`, or a bare
/// `` `/drain` `` (one path segment in backticks).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint {
    method: Option<String>,
    path: String,
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'/' || b == b'-' || b == b'_'
}

fn endpoint_mentions(text: &str) -> BTreeSet<Endpoint> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    for method in METHODS {
        for (at, _) in text.match_indices(&format!("{method} /")) {
            if at > 0 && bytes[at - 1].is_ascii_alphanumeric() {
                continue;
            }
            let start = at + method.len() + 1;
            let len = bytes[start..]
                .iter()
                .take_while(|b| is_path_byte(**b))
                .count();
            out.insert(Endpoint {
                method: Some(method.to_string()),
                path: text[start..start + len].to_string(),
            });
        }
    }
    for (at, _) in text.match_indices("`/") {
        let start = at + 1;
        let len = bytes[start + 1..]
            .iter()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'-')
            .count()
            + 1;
        if len > 1 && bytes.get(start + len) == Some(&b'`') {
            out.insert(Endpoint {
                method: None,
                path: text[start..start + len].to_string(),
            });
        }
    }
    out
}

/// Whether a server at `addr` routes `method path`: axum answers 404 for
/// a path it does not route and 405 for a method it does not route there.
fn routes(addr: std::net::SocketAddr, method: &str, path: &str) -> bool {
    let url = format!("http://{addr}{path}");
    let (status, body) = goaway_tests::agent::http(method, &url, &[])
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let routed = status != 404 && status != 405;
    if !routed {
        eprintln!("{method} {url}: {status} {body}");
    }
    routed
}

#[test]
fn every_endpoint_the_design_names_is_served() {
    let mentioned = endpoint_mentions(&design());
    assert!(
        mentioned.len() > 12,
        "too few endpoints found: {mentioned:?}"
    );

    // A real agent, with a drain token: the guarded endpoints then answer
    // 401, which shows they are routed without draining anything.
    let agent =
        goaway_tests::agent::AgentBuilder::new(env!("CARGO_BIN_EXE_goaway-agent"), "127.0.0.1:1")
            .args(["--drain-token", "design-doc-test"])
            .start()
            .expect("agent");
    // The operator's admin routes, served here.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let operator_admin = listener.local_addr().unwrap();
    let router = goaway_operator::admin::router(Arc::default(), Arc::default());
    runtime.spawn(async move { axum::serve(listener, router).await });
    // Not served by anything a test process can run here: the webhook
    // (the operator's, behind TLS and a cluster) and the control
    // channel's stream (the path the agent dials; the operator's side is
    // not built yet, docs/design.md §7.4), compared with the paths the
    // code routes and dials.
    let constants = [
        ("POST", goaway_operator::webhook::MUTATE_PATH),
        ("GET", goaway_transport::control::PATH),
    ];

    let unserved: Vec<String> = mentioned
        .iter()
        .filter(|e| {
            let methods: Vec<&str> = match &e.method {
                Some(m) => vec![m.as_str()],
                None => METHODS.to_vec(),
            };
            !methods.iter().any(|m| {
                constants.contains(&(*m, e.path.as_str()))
                    || (["GET", "POST", "PUT"].contains(m)
                        && (routes(agent.admin, m, &e.path) || routes(operator_admin, m, &e.path)))
            })
        })
        .map(|e| format!("{} {}", e.method.as_deref().unwrap_or("(any)"), e.path))
        .collect();
    assert!(
        unserved.is_empty(),
        "{DESIGN} names endpoints nothing serves: {unserved:?}"
    );
}

#[test]
fn every_admin_route_of_the_agent_is_in_the_design() {
    // The route paths are the string literals `router` gives axum.
    let source = read("agent/src/admin/mod.rs");
    let router = &source[source.find("pub fn router").expect("router")..];
    let router = &router[..router.find("\n}\n").expect("end of router")];
    let paths: Vec<&str> = router
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with('/'))
        .collect();
    assert!(paths.len() >= 7, "routes not found: {paths:?}");
    let doc = design();
    let missing: Vec<&&str> = paths
        .iter()
        .filter(|p| !doc.contains(&format!("`{p}`")) && !doc.contains(&format!(" {p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "admin routes missing from {DESIGN}: {missing:?}"
    );
}

// --------------------------------------------------------- citations

/// The design document's section numbers (`3`, `3.4`), from its
/// headings, checked to run in order: top-level sections 1, 2, 3…, and
/// each one's subsections N.1, N.2….
fn sections(doc: &str) -> BTreeSet<String> {
    let mut found = Vec::new();
    for line in doc.lines() {
        let Some(heading) = line
            .strip_prefix("### ")
            .or_else(|| line.strip_prefix("## "))
        else {
            continue;
        };
        let number = heading
            .split(' ')
            .next()
            .unwrap_or("")
            .trim_end_matches('.');
        if !number.is_empty() && number.split('.').all(|p| p.parse::<u32>().is_ok()) {
            found.push(number.to_string());
        }
    }
    let (mut top, mut sub) = (0, 0);
    for number in &found {
        let parts: Vec<u32> = number.split('.').map(|p| p.parse().unwrap()).collect();
        match parts[..] {
            [t] => {
                assert_eq!(t, top + 1, "section {number} follows section {top}");
                (top, sub) = (t, 0);
            }
            [t, s] => {
                assert_eq!(
                    (t, s),
                    (top, sub + 1),
                    "section {number} follows {top}.{sub}"
                );
                sub = s;
            }
            _ => panic!("section {number}: two levels at most"),
        }
    }
    found.into_iter().collect()
}

/// A section number at the start of `text` (`3.4` of `3.4, …`), without
/// a sentence's full stop.
fn number_at(text: &str) -> Option<String> {
    let len = text
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let number = text[..len].trim_end_matches('.');
    (!number.is_empty()).then(|| number.to_string())
}

/// The sections `text` cites: the path of the document followed by
/// ` §N`, and each `§M` chained to it by `, `, ` and `, ` or ` or `–`
/// (docs/design.md §8, §9). Also counts the mentions of the path that no
/// section follows.
fn citations(text: &str) -> (Vec<String>, usize) {
    let (mut cited, mut bare) = (Vec::new(), 0);
    for (at, _) in text.match_indices(DESIGN) {
        let Some(mut rest) = text[at + DESIGN.len()..].strip_prefix(" §") else {
            bare += 1;
            continue;
        };
        while let Some(number) = number_at(rest) {
            rest = &rest[number.len()..];
            cited.push(number);
            match [", §", " and §", ", and §", " or §", "–§"]
                .iter()
                .find_map(|sep| rest.strip_prefix(sep))
            {
                Some(next) => rest = next,
                None => break,
            }
        }
    }
    (cited, bare)
}

#[test]
fn every_citation_of_the_design_names_a_section_that_exists() {
    let doc = design();
    let sections = sections(&doc);
    assert!(sections.len() > 50, "too few sections: {sections:?}");
    let mut wrong = Vec::new();
    let mut count = 0;
    for path in rust_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let (cited, bare) = citations(&text);
        let shown = path.strip_prefix(repo()).unwrap().display().to_string();
        if bare > 0 {
            wrong.push(format!("{shown}: {DESIGN} without a section"));
        }
        count += cited.len();
        wrong.extend(
            cited
                .into_iter()
                .filter(|n| !sections.contains(n))
                .map(|n| format!("{shown}: §{n}")),
        );
    }
    assert!(count > 40, "only {count} citations found in the code");
    // The README cites sections the same way; a plain link is fine there.
    let (cited, _) = citations(&read("README.md"));
    wrong.extend(
        cited
            .into_iter()
            .filter(|n| !sections.contains(n))
            .map(|n| format!("README.md: §{n}")),
    );
    // The document's own cross-references: every § in it is one of its
    // sections (outside sources are cited as "section N").
    for (at, _) in doc.match_indices('§') {
        match number_at(&doc[at + '§'.len_utf8()..]) {
            Some(n) if sections.contains(&n) => {}
            n => wrong.push(format!("{DESIGN}: §{}", n.unwrap_or_default())),
        }
    }
    assert!(
        wrong.is_empty(),
        "citations of sections that do not exist: {wrong:?}"
    );
}

#[test]
fn no_rust_file_or_the_readme_cites_the_old_specification() {
    // The word the old citations used, standing alone (not as part of an
    // identifier such as `SPEC_METRICS`); spelt in two halves so that this
    // file does not contain it.
    let word = concat!("SP", "EC");
    let stands_alone = |text: &str| {
        let bytes = text.as_bytes();
        text.match_indices(word).any(|(at, _)| {
            let part = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
            !at.checked_sub(1).is_some_and(|i| part(bytes[i]))
                && !bytes.get(at + word.len()).is_some_and(|b| part(*b))
        })
    };
    let mut left: Vec<String> = rust_files()
        .into_iter()
        .filter(|p| stands_alone(&std::fs::read_to_string(p).unwrap()))
        .map(|p| p.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    if stands_alone(&read("README.md")) {
        left.push("README.md".into());
    }
    assert!(
        left.is_empty(),
        "files still citing the old specification instead of {DESIGN}: {left:?}"
    );
}
