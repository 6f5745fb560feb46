//! HTTP/2 conformance: h2spec (`github.com/summerwind/h2spec`, strict
//! mode, built by `scripts/build-peers`) against the agent's listener with
//! a real HTTP/2 app behind it (Go's net/http). The outcomes must match
//! `tests/peers/h2spec/accepted.txt` exactly, so a regression fails and a
//! fixed failure must be taken off the list.

mod common;

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use common::agent;
use goaway_tests::peers::{h2spec_command, http_app};
use goaway_tests::{Scratch, repo_root};

/// (outcome, section, test case) — outcome `fail` or `skip`.
type Outcome = (String, String, String);

/// Undoes the XML escapes h2spec's JUnit writer produces.
fn unescape(s: &str) -> String {
    s.replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let len = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + len]))
}

/// Every test case in a JUnit report: (outcome, section, name), outcome
/// `pass`, `fail` or `skip`.
fn parse_junit(xml: &str) -> Result<Vec<Outcome>> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<testcase ") {
        rest = &rest[i..];
        let tag_end = rest.find('>').context("unterminated <testcase>")?;
        let tag = &rest[..tag_end];
        let (body, next) = if tag.ends_with('/') {
            ("", &rest[tag_end + 1..])
        } else {
            let close = rest.find("</testcase>").context("no </testcase>")?;
            (&rest[tag_end + 1..close], &rest[close..])
        };
        let outcome = if body.contains("<error") || body.contains("<failure") {
            "fail"
        } else if body.contains("<skipped") {
            "skip"
        } else {
            "pass"
        };
        out.push((
            outcome.to_owned(),
            attr(tag, "package").context("testcase without package")?,
            attr(tag, "classname").context("testcase without classname")?,
        ));
        rest = next;
    }
    Ok(out)
}

fn accepted() -> Result<BTreeSet<Outcome>> {
    let path = repo_root().join("tests/peers/h2spec/accepted.txt");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 4 || f[3].trim().is_empty() {
            bail!(
                "{}: want OUTCOME, SECTION, TEST CASE, WHY (tab-separated): {line:?}",
                path.display()
            );
        }
        out.insert((f[0].to_owned(), f[1].to_owned(), f[2].to_owned()));
    }
    Ok(out)
}

/// `h2spec --strict` against `port`: every case's outcome, and h2spec's
/// output.
fn run_h2spec(port: u16) -> Result<(Vec<Outcome>, String)> {
    let dir = Scratch::new("h2spec")?;
    let report = dir.path().join("h2spec.xml");
    let out = h2spec_command()?
        .args(["--strict", "--timeout", "5", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("--junit-report")
        .arg(&report)
        .output()
        .context("running h2spec")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let xml = std::fs::read_to_string(&report)
        .with_context(|| format!("h2spec wrote no report; output:\n{stdout}"))?;
    let all = parse_junit(&xml)?;
    // h2spec 2.2.1 --strict has 146 cases; far fewer means it did not run.
    assert!(all.len() >= 140, "only {} test cases:\n{stdout}", all.len());
    Ok((all, stdout))
}

#[test]
fn h2spec_strict_outcomes_match_the_accepted_list() -> Result<()> {
    let (_app, port) = http_app()?;
    let agent = agent(port).start()?;
    let (all, stdout) = run_h2spec(agent.listen.port())?;
    let passed = all.iter().filter(|o| o.0 == "pass").count();
    eprintln!("h2spec: {passed}/{} passed", all.len());
    let seen: BTreeSet<Outcome> = all.into_iter().filter(|o| o.0 != "pass").collect();
    let want = accepted()?;
    let new: Vec<_> = seen.difference(&want).collect();
    let gone: Vec<_> = want.difference(&seen).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "h2spec outcomes changed.\nnot accepted (fix, or add to tests/peers/h2spec/accepted.txt with the reason): {new:?}\n\
         accepted but no longer seen (remove from the list): {gone:?}\n\nh2spec output:\n{stdout}"
    );
    Ok(())
}

/// The README's comparison: the same run straight against the app (Go's
/// net/http), without the agent. Printed, not asserted: it measures the
/// app, not goaway.
#[test]
fn h2spec_strict_straight_against_the_app_for_comparison() -> Result<()> {
    let (_app, port) = http_app()?;
    let (all, _) = run_h2spec(port)?;
    let failed: Vec<_> = all.iter().filter(|o| o.0 != "pass").collect();
    eprintln!(
        "h2spec against the app directly: {}/{} passed; not passed: {failed:?}",
        all.len() - failed.len(),
        all.len()
    );
    Ok(())
}

#[test]
fn junit_reports_are_read_with_outcomes_and_unescaped_names() -> Result<()> {
    let xml = r#"<testsuites><testsuite name="x">
        <testcase package="http2/8.1.2.2" classname="Sends the TE header field with any value other than &#34;trailers&#34;" time="0.1"></testcase>
        <testcase package="http2/3.5" classname="Sends invalid connection preface" time="0.1">
          <error>Connection closed</error>
        </testcase>
        <testcase package="http2/5.1.2" classname="Sends HEADERS" time="0"><skipped></skipped></testcase>
        <testcase package="generic/1" classname="Sends a preface" time="0"/>
    </testsuite></testsuites>"#;
    let got = parse_junit(xml)?;
    let want = [
        (
            "pass",
            "http2/8.1.2.2",
            "Sends the TE header field with any value other than \"trailers\"",
        ),
        ("fail", "http2/3.5", "Sends invalid connection preface"),
        ("skip", "http2/5.1.2", "Sends HEADERS"),
        ("pass", "generic/1", "Sends a preface"),
    ];
    let want: Vec<Outcome> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(got, want);
    Ok(())
}
