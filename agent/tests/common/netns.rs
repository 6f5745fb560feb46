//! Network namespaces as pods on a node, for tests that need real
//! addresses (root only): a bridge in the root namespace — the "node",
//! which is each pod's default gateway, as with the bridge CNI plugin —
//! and namespaces hanging off it.

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use goaway_tests::poll;

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub(crate) fn run(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {args:?}"))
}

pub(crate) fn ok(program: &str, args: &[&str]) -> Result<String> {
    let out = run(program, args)?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cmd`, run inside the network namespace at `ns` (a `/proc/PID/ns/net`
/// path). `nsenter` execs it, so the pid is the command's own and signals
/// reach it.
pub(crate) fn in_netns(ns: &str, cmd: &Command) -> Command {
    let mut wrapped = Command::new("nsenter");
    wrapped
        .arg(format!("--net={ns}"))
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped
}

/// `program args…` inside `ns`, to completion.
pub(crate) fn ok_in(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut all = vec![format!("--net={ns}"), "--".into(), program.into()];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    ok("nsenter", &all)
}

/// A bridge in the root namespace and network namespaces hanging off it,
/// all removed on drop. The namespaces are held by `unshare --net`
/// processes, not `ip netns add`: that bind-mounts `/run/netns` over
/// itself, which duplicates the mounts of the node's CNI namespaces and
/// leaves the kubelet unable to delete pods when a local cluster runs
/// alongside.
pub(crate) struct Net {
    /// `10.213.N`: this run's /24.
    prefix: String,
    bridge: String,
    tag: String,
    holders: Vec<std::process::Child>,
}

impl Net {
    pub(crate) fn new() -> Result<Net> {
        let n = 20 + std::process::id() % 200;
        let net = Net {
            prefix: format!("10.213.{n}"),
            bridge: format!("gai{n}"),
            tag: format!("ga{n}"),
            holders: Vec::new(),
        };
        // A leftover of a killed run with the same number.
        let _ = run("ip", &["link", "del", &net.bridge]);
        ok("ip", &["link", "add", &net.bridge, "type", "bridge"])?;
        let gateway = format!("{}.1/24", net.prefix);
        ok("ip", &["addr", "add", &gateway, "dev", &net.bridge])?;
        ok("ip", &["link", "set", &net.bridge, "up"])?;
        Ok(net)
    }

    /// A namespace with `eth0` at `.{host}`; returns its path.
    pub(crate) fn host(&mut self, name: &str, host: u8) -> Result<String> {
        let holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "100000"])
            .spawn()
            .context("unshare --net")?;
        let pid = holder.id().to_string();
        self.holders.push(holder);
        let ns = format!("/proc/{pid}/ns/net");
        // Until unshare has moved itself into the new namespace.
        let own = std::fs::read_link("/proc/self/ns/net")?;
        let (timeout, every) = (Duration::from_secs(10), Duration::from_millis(10));
        poll::until("unshare --net to start", timeout, every, || {
            Ok(std::fs::read_link(&ns).is_ok_and(|l| l != own))
        })?;
        let veth = format!("{}{name}", self.tag);
        let _ = run("ip", &["link", "del", &veth]);
        ok(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pid,
            ],
        )?;
        ok("ip", &["link", "set", &veth, "master", &self.bridge, "up"])?;
        let addr = format!("{}.{host}/24", self.prefix);
        ok_in(&ns, "ip", &["addr", "add", &addr, "dev", "eth0"])?;
        ok_in(&ns, "ip", &["link", "set", "eth0", "up"])?;
        ok_in(&ns, "ip", &["link", "set", "lo", "up"])?;
        // The node (the bridge) is the pod's gateway, as with the bridge
        // CNI plugin.
        let gateway = self.ip(1);
        ok_in(&ns, "ip", &["route", "add", "default", "via", &gateway])?;
        Ok(ns)
    }

    pub(crate) fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // A namespace goes with its last process (its veth with it).
        for holder in &mut self.holders {
            let _ = holder.kill();
            let _ = holder.wait();
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}
