//! Who may use the admin endpoints that change what the agent does
//! (`/drain`, `PUT /log-level`) or reveal its clients (`/connections`):
//! the pod itself (loopback) and the node's kubelet, whose preStop
//! `httpGet` hook is how a drain normally starts.
//!
//! The drain token alone cannot be the guard: it is in the pod spec, which
//! anyone allowed to `get pods` (the built-in `view` role) can read. The
//! source address can: the kubelet connects to the pod IP from the node's
//! network namespace, so its packets come from the node's address on the
//! route to the pod — the pod's default gateway where the CNI plugin
//! bridges pods to the node (the bridge and flannel plugins, Cilium), the
//! node's own IP where it routes them (Calico, the AWS VPC CNI). Another
//! pod's connection comes from that pod's IP, which is neither.
//!
//! `--admin-allow` lists what is allowed besides loopback: addresses or
//! CIDRs, `gateway` for the pod's default gateways (read from the
//! kernel's routing table at start), or `any` to turn the check off. The
//! operator injects `gateway,$(GOAWAY_HOST_IP)` (the node IP from the
//! downward API).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

/// The sources allowed besides loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminAccess {
    /// Anyone (`--admin-allow any`).
    Any,
    /// Loopback and these networks.
    Only(Vec<IpNet>),
}

impl AdminAccess {
    /// Whether a request from `peer` may use the guarded endpoints.
    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        match self {
            AdminAccess::Any => true,
            AdminAccess::Only(nets) => peer.is_loopback() || nets.iter().any(|n| n.contains(&peer)),
        }
    }

    /// Parses an `--admin-allow` list; `gateways` are what `gateway`
    /// stands for.
    pub fn parse(list: &str, gateways: &[IpAddr]) -> Result<AdminAccess, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "any" => return Ok(AdminAccess::Any),
                "gateway" => nets.extend(gateways.iter().copied().map(IpNet::from)),
                _ => nets.push(
                    IpNet::from_str(item)
                        .or_else(|_| IpAddr::from_str(item).map(IpNet::from))
                        .map_err(|_| {
                            format!("{item:?} is not an address, a CIDR, `gateway` or `any`")
                        })?,
                ),
            }
        }
        Ok(AdminAccess::Only(nets))
    }
}

/// The pod's default gateways, from the kernel's routing tables (empty
/// where there are none or `/proc` cannot be read).
pub fn default_gateways() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(table) = std::fs::read_to_string("/proc/net/route") {
        out.extend(ipv4_default_gateways(&table).into_iter().map(IpAddr::V4));
    }
    if let Ok(table) = std::fs::read_to_string("/proc/net/ipv6_route") {
        out.extend(ipv6_default_gateways(&table).into_iter().map(IpAddr::V6));
    }
    out
}

/// `/proc/net/route`: `Iface Destination Gateway Flags …`, addresses as
/// the hex of a native-endian (here little-endian) u32.
fn ipv4_default_gateways(table: &str) -> Vec<Ipv4Addr> {
    const RTF_GATEWAY: u32 = 0x2;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, gw, flags) = (f.get(1)?, f.get(2)?, f.get(3)?);
            let hex = |s: &str| u32::from_str_radix(s, 16).ok();
            let (dest, gw, flags) = (hex(dest)?, hex(gw)?, hex(flags)?);
            (dest == 0 && flags & RTF_GATEWAY != 0).then(|| Ipv4Addr::from(gw.to_le_bytes()))
        })
        .collect()
}

/// `/proc/net/ipv6_route`: destination, its prefix length, source, its
/// prefix length, next hop, … as 32-digit hex.
fn ipv6_default_gateways(table: &str) -> Vec<Ipv6Addr> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, len, hop) = (f.first()?, f.get(1)?, f.get(4)?);
            let addr = |s: &str| u128::from_str_radix(s, 16).ok().map(Ipv6Addr::from);
            let hop = addr(hop)?;
            (addr(dest)?.is_unspecified() && *len == "00" && !hop.is_unspecified()).then_some(hop)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gateways_are_read_from_the_routing_tables() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t0100580A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t0000580A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(
            ipv4_default_gateways(v4),
            ["10.88.0.1".parse::<Ipv4Addr>().unwrap()]
        );
        let v6 = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n";
        assert_eq!(
            ipv6_default_gateways(v6),
            ["fd00::1".parse::<Ipv6Addr>().unwrap()]
        );
    }

    #[test]
    fn loopback_and_the_listed_sources_are_allowed_and_nothing_else() {
        let gw: IpAddr = "10.88.0.1".parse().unwrap();
        let access = AdminAccess::parse("gateway, 192.168.1.7, 172.16.0.0/12", &[gw]).unwrap();
        for ok in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "10.88.0.1",
            "192.168.1.7",
            "172.20.3.4",
        ] {
            assert!(access.allows(ok.parse().unwrap()), "{ok}");
        }
        // Another pod on the same bridge, another node's pod.
        for refused in ["10.88.0.7", "10.244.1.5", "192.168.1.8", "::ffff:10.88.0.7"] {
            assert!(!access.allows(refused.parse().unwrap()), "{refused}");
        }
        assert_eq!(
            AdminAccess::parse("", &[gw]).unwrap(),
            AdminAccess::Only(vec![])
        );
        assert!(
            AdminAccess::parse("gateway,any", &[])
                .unwrap()
                .allows("10.0.0.9".parse().unwrap())
        );
        let e = AdminAccess::parse("gateway,the-node", &[]).unwrap_err();
        assert!(e.contains("the-node"), "{e}");
    }
}
