//! The README against the binaries' own parsers (clap's definitions, not
//! a copy): every `GOAWAY_*` variable the README names is one a binary
//! reads (or a script of this repository does), and every flag of the
//! agent and of the operator is documented, in the README or in the
//! chart's README.

mod doc_check;

use doc_check::{binaries, check_env_elsewhere, mentions_flag, read, unknown_env_names};

#[test]
fn every_goaway_variable_the_readme_names_is_read_by_something() {
    // Variables no flag reads are checked against the file said to read
    // them (`doc_check::ENV_ELSEWHERE`).
    check_env_elsewhere();
    let unknown = unknown_env_names(&read("README.md"));
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
        // Whole flag only: `--admin` must not match `--admin-addr`.
        .filter(|(_, flag)| !mentions_flag(&docs, flag))
        .map(|(cmd, flag)| format!("{cmd} {flag}"))
        .collect();
    assert!(
        undocumented.is_empty(),
        "flags missing from README.md and charts/goaway/README.md: {undocumented:?}"
    );
}
