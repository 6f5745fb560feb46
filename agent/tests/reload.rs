//! Policy file hot reload (docs/design.md §5.4), black-box: the file is
//! replaced the ways tools and Kubernetes do it, and `/policy`, `/metrics`
//! and the connections show the result.

mod common;

use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use common::{agent, collect_until_exit, events};
use goaway_tests::agent::{Agent, wait_for};
use goaway_tests::{Scratch, grpc_server, h2_peer};

const OK: &str = "goaway_policy_reloads_total{result=\"ok\"}";
const ERROR: &str = "goaway_policy_reloads_total{result=\"error\"}";

/// docs/design.md §5.4: a change is noticed within 2 seconds; 5 leaves room
/// for a loaded machine.
const NOTICE: Duration = Duration::from_secs(5);

fn max_age(agent: &Agent) -> Result<String> {
    Ok(agent.policy()?["server"]["maxConnectionAge"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

fn wait_metric(agent: &Agent, series: &str, value: f64) -> Result<()> {
    let mut last = None;
    wait_for(NOTICE, series, || {
        last = agent.metrics()?.get(series);
        Ok(last == Some(value))
    })
    .map_err(|e| e.context(format!("{series} is {last:?}, want {value}")))
}

#[test]
fn a_good_file_replaced_by_rename_is_applied_and_counted() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let dir = Scratch::new("reload")?;
    let file = dir.write("policy.yaml", "server: {maxConnectionAge: 1h}\n")?;
    let agent = agent(port).policy(&file).start()?;
    assert_eq!(max_age(&agent)?, "1h0m0s");

    dir.replace_by_rename("policy.yaml", "server: {maxConnectionAge: 30s}\n")?;
    wait_for(NOTICE, "the new policy on /policy", || {
        Ok(max_age(&agent)? == "30s")
    })?;
    wait_metric(&agent, OK, 1.0)?;
    assert_eq!(agent.metrics()?.value(ERROR)?, 0.0);
    assert!(agent.policy()?["source"]["last_error"].is_null());
    Ok(())
}

#[test]
fn a_bad_file_is_rejected_the_old_policy_stays_and_the_error_is_counted() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let dir = Scratch::new("reload")?;
    let file = dir.write("policy.yaml", "server: {maxConnectionAge: 1h}\n")?;
    let agent = agent(port).policy(&file).start()?;

    // An unknown (misspelt) field.
    dir.replace_by_rename("policy.yaml", "server: {maxConectionAge: 30s}\n")?;
    wait_metric(&agent, ERROR, 1.0)?;
    let p = agent.policy()?;
    assert_eq!(p["server"]["maxConnectionAge"], "1h0m0s", "{p}");
    let why = p["source"]["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("maxConectionAge"),
        "the error should name the field: {p}"
    );
    assert!(
        agent.log().contains("maxConectionAge"),
        "no error logged:\n{}",
        agent.log()
    );

    // A negative duration, written in place.
    std::fs::write(
        &file,
        "server: {maxConnectionAge: 1h}\ndrain: {timeout: -5s}\n",
    )?;
    wait_metric(&agent, ERROR, 2.0)?;
    let p = agent.policy()?;
    assert_eq!(p["drain"]["timeout"], "30s", "{p}");
    assert!(
        p["source"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("drain.timeout"),
        "{p}"
    );

    // Truncated, as an editor or `cat >` does before writing: not taken for
    // the all-defaults policy.
    std::fs::write(&file, "")?;
    wait_metric(&agent, ERROR, 3.0)?;
    let p = agent.policy()?;
    assert_eq!(p["server"]["maxConnectionAge"], "1h0m0s", "{p}");
    assert!(
        p["source"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("empty"),
        "{p}"
    );

    // Fixed: applied, and the error is cleared.
    dir.replace_by_rename("policy.yaml", "server: {maxConnectionAge: 45s}\n")?;
    wait_for(NOTICE, "the fixed policy", || Ok(max_age(&agent)? == "45s"))?;
    wait_metric(&agent, OK, 1.0)?;
    assert!(agent.policy()?["source"]["last_error"].is_null());
    assert_eq!(agent.metrics()?.value(ERROR)?, 3.0);
    Ok(())
}

/// A ConfigMap volume: `policy.yaml -> ..data/policy.yaml`,
/// `..data -> ..<timestamp>`; an update writes a new timestamped
/// directory and renames a new `..data` link over the old one.
struct ConfigMapVolume {
    dir: Scratch,
    generation: u32,
}

impl ConfigMapVolume {
    fn new(text: &str) -> Result<ConfigMapVolume> {
        let mut v = ConfigMapVolume {
            dir: Scratch::new("configmap")?,
            generation: 0,
        };
        v.update(text)?;
        symlink("..data/policy.yaml", v.dir.path().join("policy.yaml"))?;
        Ok(v)
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    fn update(&mut self, text: &str) -> Result<()> {
        self.generation += 1;
        let old = format!("..2026_01_01_00_00_0{}", self.generation - 1);
        let new = format!("..2026_01_01_00_00_0{}", self.generation);
        std::fs::create_dir_all(self.dir.path().join(&new))?;
        std::fs::write(self.dir.path().join(&new).join("policy.yaml"), text)?;
        let tmp = self.dir.path().join("..data_tmp");
        symlink(&new, &tmp)?;
        std::fs::rename(&tmp, self.dir.path().join("..data"))?;
        let _ = std::fs::remove_dir_all(self.dir.path().join(old));
        Ok(())
    }
}

#[test]
fn a_configmap_symlink_swap_is_noticed() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let mut volume = ConfigMapVolume::new("server: {maxConnectionAge: 1h}\n")?;
    let agent = agent(port).policy(volume.file()).start()?;
    assert_eq!(max_age(&agent)?, "1h0m0s");

    volume.update("server: {maxConnectionAge: 20s}\n")?;
    wait_for(NOTICE, "the swapped policy", || {
        Ok(max_age(&agent)? == "20s")
    })?;
    wait_metric(&agent, OK, 1.0)?;

    volume.update("server: {maxConnectionAge: soon}\n")?;
    wait_metric(&agent, ERROR, 1.0)?;
    assert_eq!(max_age(&agent)?, "20s");
    Ok(())
}

#[test]
fn a_reloaded_max_connection_age_reaches_existing_and_new_connections() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let dir = Scratch::new("reload")?;
    let file = dir.write("policy.yaml", "")?;
    let agent = agent(port).policy(&file).start()?;
    let before = h2_peer(
        "h2-idle",
        &[
            "client",
            "--target",
            &agent.target(),
            "--seconds",
            "15",
            "idle",
        ],
    )?;
    wait_for(NOTICE, "the first connection", || {
        Ok(agent.connections()?.len() == 1)
    })?;

    dir.replace_by_rename("policy.yaml", "server: {maxConnectionAge: 1s}\n")?;
    wait_for(NOTICE, "the new policy", || Ok(max_age(&agent)? == "1s"))?;
    let after = h2_peer(
        "h2-idle",
        &[
            "client",
            "--target",
            &agent.target(),
            "--seconds",
            "15",
            "idle",
        ],
    )?;

    for (name, client) in [("existing", before), ("new", after)] {
        let seen = collect_until_exit(client, Duration::from_secs(30))?;
        let goaways = events(&seen, "goaway");
        assert!(
            !goaways.is_empty(),
            "{name} connection got no GOAWAY: {seen:?}"
        );
        assert_eq!(goaways[0]["debug"], "max_age", "{name}: {seen:?}");
        assert_eq!(
            events(&seen, "closed").len(),
            1,
            "{name} connection not closed: {seen:?}"
        );
    }
    assert!(
        agent
            .metrics()?
            .value("goaway_goaways_sent_total{reason=\"max_age\"}")?
            >= 2.0
    );
    Ok(())
}
