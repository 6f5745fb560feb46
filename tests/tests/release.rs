//! `scripts/release` against a registry on loopback: Debian's
//! `docker-registry`, started here with its own storage, spoken to over
//! plain HTTP. The release runs twice (the second time with another umask
//! and into another directory) and must push the same image digests; then
//! what is in the registry is checked with the tools a user would use —
//! skopeo for the images' labels and config, Helm for the chart (pulled
//! and rendered with no `--set`), cosign with the public key for the
//! signatures and SBOM attestations — and tampering is caught: another
//! image or another chart pushed under the released tag, or a wrong key,
//! fails `cosign verify`.
//!
//! The release's cargo build is the one `.ci/run` made for the node
//! end-to-end test, so here it only assembles, pushes and signs; on a
//! machine where no release build was made yet, the first run builds.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use goaway_operator::inject::AGENT_UID;
use goaway_tests::repo_root;
use serde_json::Value;

/// The workspace version: the only version a release may have.
const VERSION: &str = env!("CARGO_PKG_VERSION");
const IMAGES: [&str; 2] = ["goaway-agent", "goaway-operator"];
const TOOLS: [&str; 7] = [
    "docker-registry",
    "skopeo",
    "umoci",
    "helm",
    "cosign",
    "cargo-cyclonedx",
    "jq",
];

fn missing_tools() -> Vec<&'static str> {
    TOOLS
        .into_iter()
        .filter(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
        })
        .collect()
}

/// A fresh directory under the test's target tmpdir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(what: &str, cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Stdout of a command that must succeed.
fn ok(what: &str, cmd: &mut Command) -> String {
    goaway_tests::ok(what, run(what, cmd))
}

/// Stderr of a command that must fail.
fn fails(what: &str, cmd: &mut Command) -> String {
    let out = run(what, cmd);
    assert!(
        !out.status.success(),
        "{what} succeeded, but must fail:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `docker-registry serve` on 127.0.0.1, killed on drop.
struct Registry {
    /// `localhost:PORT`, as the release and users name it.
    name: String,
    child: Child,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        // A port the kernel just gave out; the registry binds it at once.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\n\
                 storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
                 http: {{addr: 127.0.0.1:{port}}}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry");
        let registry = Registry {
            name: format!("localhost:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("http://127.0.0.1:{port}/v2/"))
            .call()
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on 127.0.0.1:{port} within 30s; see {}",
                dir.join("registry.log").display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cosign key pair in `dir` (empty password): `cosign.key`, `cosign.pub`.
fn key_pair(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    ok(
        "cosign generate-key-pair",
        Command::new("cosign")
            .arg("generate-key-pair")
            .current_dir(dir)
            .env("COSIGN_PASSWORD", ""),
    );
    dir.to_path_buf()
}

/// `scripts/release` into `out` under `umask`; its release.json.
fn release(registry: &str, out: &Path, key: &Path, umask: &str) -> Value {
    let start = Instant::now();
    let script = repo_root().join("scripts/release");
    ok(
        "scripts/release",
        Command::new("sh")
            .args(["-c", &format!("umask {umask} && exec \"$0\" \"$@\"")])
            .arg(&script)
            .args(["--registry", registry, "--version", VERSION, "--sign-key"])
            .arg(key.join("cosign.key"))
            .arg("--out")
            .arg(out)
            // A checkout being worked on; in CI the tree is clean and the
            // revision label is checked to be HEAD's.
            .arg("--allow-dirty")
            .env("COSIGN_PASSWORD", "")
            .stderr(Stdio::inherit()),
    );
    eprintln!("scripts/release: {:.0?}", start.elapsed());
    serde_json::from_str(&std::fs::read_to_string(out.join("release.json")).unwrap()).unwrap()
}

fn digest(release: &Value, image: &str) -> String {
    release["images"][image]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The names and contents of every blob of an OCI layout.
fn blobs(layout: &Path) -> BTreeSet<(String, Vec<u8>)> {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn skopeo(args: &[&str]) -> String {
    ok(
        "skopeo",
        Command::new("skopeo").args(args).arg("--tls-verify=false"),
    )
}

fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    )
}

/// `cosign verify` (or `verify-attestation` with `extra`) with public key
/// `key`, without a transparency log, as the release signs.
fn cosign_verify(verb: &str, key: &Path, reference: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new("cosign");
    cmd.arg(verb)
        .arg("--key")
        .arg(key)
        .args(["--insecure-ignore-tlog=true", "--allow-http-registry"])
        .args(extra)
        .arg(reference);
    cmd
}

#[test]
fn a_release_pushes_reproducible_signed_images_and_a_chart_pinned_to_them() {
    let missing = missing_tools();
    if !missing.is_empty() {
        goaway_transport::test_util::skip(&format!(
            "{missing:?} not on PATH: scripts/install-test-deps installs them (helm: eval \"$(scripts/kube-local env)\")"
        ));
        return;
    }
    let dir = scratch("release");
    let registry = Registry::start(&dir);
    let reg = registry.name.as_str();
    let keys = key_pair(&dir.join("keys"));
    let public = keys.join("cosign.pub");

    // Reproducible: a second release (other directory, umask 077) builds
    // byte-identical blobs and pushes the same digests.
    let first = release(reg, &dir.join("first"), &keys, "022");
    let second = release(reg, &dir.join("second"), &keys, "077");
    for image in IMAGES {
        eprintln!(
            "{image}: {} / {}",
            digest(&first, image),
            digest(&second, image)
        );
        assert_eq!(digest(&first, image), digest(&second, image), "{image}");
    }
    assert!(
        blobs(&dir.join("first/oci")) == blobs(&dir.join("second/oci")),
        "the two releases' OCI layouts differ"
    );

    let head = ok(
        "git rev-parse",
        Command::new("git")
            .arg("-C")
            .arg(repo_root())
            .args(["rev-parse", "HEAD"]),
    );
    for image in IMAGES {
        let want = digest(&first, image);
        let reference = format!("docker://{reg}/{image}:{VERSION}");
        // The registry serves what was built, an index of one amd64 image.
        let raw = skopeo(&["inspect", "--raw", &reference]);
        assert_eq!(sha256(raw.as_bytes()), want, "{image} in the registry");
        let index: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(
            index["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(index["manifests"][0]["platform"]["architecture"], "amd64");
        let manifest: Value = serde_json::from_str(&skopeo(&[
            "inspect",
            "--raw",
            &format!(
                "docker://{reg}/{image}@{}",
                index["manifests"][0]["digest"].as_str().unwrap()
            ),
        ]))
        .unwrap();
        let size: u64 = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["size"].as_u64().unwrap())
            .sum();
        eprintln!("{image}: {size} bytes compressed");

        // Labels and config.
        let config: Value =
            serde_json::from_str(&skopeo(&["inspect", "--config", &reference])).unwrap();
        let labels = &config["config"]["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.source"],
            "https://github.com/goaway-dev/goaway"
        );
        assert_eq!(labels["org.opencontainers.image.version"], VERSION);
        assert_eq!(labels["org.opencontainers.image.title"], image);
        let revision = labels["org.opencontainers.image.revision"]
            .as_str()
            .unwrap();
        assert!(
            revision.starts_with(head.trim()),
            "revision {revision}, HEAD {head}"
        );
        assert_eq!(
            labels["org.opencontainers.image.created"], config["created"],
            "{config}"
        );
        assert_eq!(config["config"]["User"], format!("{AGENT_UID}:{AGENT_UID}"));
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([format!("/usr/local/bin/{image}")])
        );
        let cmd = if image == "goaway-operator" {
            serde_json::json!(["run"])
        } else {
            Value::Null
        };
        assert_eq!(config["config"]["Cmd"], cmd, "{image}");

        // The SBOM: the crates the binary is built from, and the Debian
        // packages of the libraries copied in.
        let text =
            std::fs::read_to_string(dir.join(format!("first/sbom/{image}.cdx.json"))).unwrap();
        let root = repo_root();
        assert!(
            !text.contains(root.to_str().unwrap()),
            "{image}'s SBOM names the checkout's path"
        );
        let sbom: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(sbom["bomFormat"], "CycloneDX");
        assert_eq!(sbom["metadata"]["component"]["name"], image);
        assert_eq!(sbom["metadata"]["component"]["version"], VERSION);
        let components: BTreeSet<&str> = sbom["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        let expected: &[&str] = match image {
            "goaway-agent" => &[
                "goaway-transport",
                "h2",
                "tokio",
                "tikv-jemallocator",
                "libc6",
                "libgcc-s1",
            ],
            _ => &[
                "goaway-transport",
                "kube-client",
                "rustls",
                "libc6",
                "libgcc-s1",
            ],
        };
        for name in expected {
            assert!(components.contains(name), "{image}'s SBOM lacks {name}");
        }
        eprintln!("{image}: SBOM of {} components", components.len());

        // Signatures and the SBOM attestation, with the public key.
        let pinned = format!("{reg}/{image}@{want}");
        ok(
            "cosign verify",
            &mut cosign_verify("verify", &public, &pinned, &[]),
        );
        ok(
            "cosign verify-attestation",
            &mut cosign_verify(
                "verify-attestation",
                &public,
                &pinned,
                &["--type", "cyclonedx"],
            ),
        );
    }

    // The chart as a user gets it: pulled by version, rendered with no
    // --set, it runs both images by the digests in the registry.
    let pulled = dir.join("pulled");
    std::fs::create_dir_all(&pulled).unwrap();
    let out = ok(
        "helm pull",
        Command::new("helm")
            .args(["pull", &format!("oci://{reg}/charts/goaway")])
            .args(["--version", VERSION, "--plain-http", "-d"])
            .arg(&pulled)
            .stderr(Stdio::piped()),
    );
    let tgz = pulled.join(format!("goaway-{VERSION}.tgz"));
    let chart = ok(
        "helm show chart",
        Command::new("helm").args(["show", "chart"]).arg(&tgz),
    );
    assert!(
        chart.contains(&format!("\nversion: {VERSION}\n")),
        "{chart}"
    );
    assert!(
        chart.contains(&format!("\nappVersion: {VERSION}\n")),
        "{chart}"
    );
    let rendered = ok(
        "helm template",
        Command::new("helm")
            .args(["template", "goaway"])
            .arg(&tgz)
            .args(["-n", "goaway-system"]),
    );
    let operator = format!(
        "{reg}/goaway-operator@{}",
        digest(&first, "goaway-operator")
    );
    let agent = format!("{reg}/goaway-agent@{}", digest(&first, "goaway-agent"));
    assert!(
        rendered.contains(&format!("image: {operator}\n")),
        "{operator}:\n{out}"
    );
    assert!(
        rendered.contains(&format!("value: \"{agent}\"\n")),
        "GOAWAY_AGENT_IMAGE {agent}"
    );
    let chart_ref = format!("{reg}/charts/goaway:{VERSION}");
    ok(
        "cosign verify (chart)",
        &mut cosign_verify("verify", &public, &chart_ref, &[]),
    );

    // A wrong key fails.
    let other = key_pair(&dir.join("other-keys"));
    let pinned = format!("{reg}/goaway-agent@{}", digest(&first, "goaway-agent"));
    fails(
        "cosign verify with another key",
        &mut cosign_verify("verify", &other.join("cosign.pub"), &pinned, &[]),
    );

    // Tampering: an image with one more file pushed under the released
    // tag fails verification by tag; the released digest still verifies.
    let tampered = dir.join("tampered");
    ok(
        "cp",
        Command::new("cp")
            .arg("-r")
            .arg(dir.join("first/oci"))
            .arg(&tampered),
    );
    let extra = dir.join("extra");
    std::fs::write(&extra, "not from the release\n").unwrap();
    let tag = format!("goaway-agent-{VERSION}-amd64");
    ok(
        "umoci insert",
        Command::new("umoci")
            .args(["insert", "--image"])
            .arg(format!("{}:{tag}", tampered.display()))
            .arg(&extra)
            .arg("/etc/extra"),
    );
    ok(
        "skopeo copy (tampered)",
        Command::new("skopeo")
            .args(["copy", "-q", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", tampered.display()))
            .arg(format!("docker://{reg}/goaway-agent:{VERSION}")),
    );
    let by_tag = format!("{reg}/goaway-agent:{VERSION}");
    let err = fails(
        "cosign verify (tampered image)",
        &mut cosign_verify("verify", &public, &by_tag, &[]),
    );
    assert!(
        err.contains("no signatures found") || err.contains("no matching signatures"),
        "{err}"
    );
    eprintln!("tampered image: {}", err.lines().last().unwrap_or_default());
    ok(
        "cosign verify (released digest)",
        &mut cosign_verify("verify", &public, &pinned, &[]),
    );

    // A chart with other values pushed under the released version.
    let unpacked = dir.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    ok(
        "tar",
        Command::new("tar")
            .arg("-xzf")
            .arg(&tgz)
            .arg("-C")
            .arg(&unpacked),
    );
    let values = unpacked.join("goaway/values.yaml");
    let text = std::fs::read_to_string(&values).unwrap();
    assert!(text.contains(&digest(&first, "goaway-operator")));
    std::fs::write(
        &values,
        text.replace(
            &digest(&first, "goaway-operator"),
            &digest(&first, "goaway-agent"),
        ),
    )
    .unwrap();
    let repacked = dir.join("repacked");
    ok(
        "helm package",
        Command::new("helm")
            .arg("package")
            .arg(unpacked.join("goaway"))
            .arg("-d")
            .arg(&repacked),
    );
    ok(
        "helm push (tampered chart)",
        Command::new("helm")
            .arg("push")
            .arg(repacked.join(format!("goaway-{VERSION}.tgz")))
            .args([&format!("oci://{reg}/charts"), "--plain-http"]),
    );
    let err = fails(
        "cosign verify (tampered chart)",
        &mut cosign_verify("verify", &public, &chart_ref, &[]),
    );
    eprintln!("tampered chart: {}", err.lines().last().unwrap_or_default());
    drop(registry);
}
