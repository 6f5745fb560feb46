//! Redirect-mode interception: `goaway-agent intercept`.
//!
//! Run once per pod, by an init container with `NET_ADMIN`, in the pod's
//! network namespace. It installs one nftables table per intercepted app
//! port, equivalent to
//!
//! ```text
//! table inet goaway_<P> {
//!     chain prerouting {
//!         type nat hook prerouting priority dstnat + 10; policy accept;
//!         tcp dport <P> redirect to :<A>
//!     }
//! }
//! ```
//!
//! so TCP arriving from outside the pod for the app port `P` reaches the
//! agent's port `A` instead, over IPv4 and IPv6 (`inet`). The agent's own
//! connections to the app (`127.0.0.1:P`) are locally generated: they
//! traverse the `output` hook, never `prerouting`, so they are not
//! redirected — no loop, and no need to exempt the agent's user ID as
//! outbound interceptors (linkerd-init, istio-init) must.
//!
//! Beside a service mesh: istio-init and linkerd-init capture inbound TCP
//! with an iptables `nat PREROUTING` REDIRECT to their proxy, at priority
//! `dstnat` (-100). Only the first NAT a connection meets at a hook
//! applies, so whichever chain runs first takes the connection; at equal
//! priority that is not defined. This chain runs at `dstnat + 10`, after
//! the mesh's: a pod's inbound connections stay with the mesh's proxy (its
//! mTLS and authorization are never bypassed), which then connects to the
//! app from inside the pod — not redirected either — so such a pod runs
//! without goaway's management rather than around the mesh. namedPort
//! interception works behind a mesh: the mesh's proxy forwards to the
//! agent's port.
//!
//! The agent image has no shell and no `nft` binary, so the rule set is
//! sent to the kernel directly as one nfnetlink batch (a transaction: all
//! or nothing). No Rust crate both speaks nftables' netlink API and builds
//! without libclang or the C libnftnl, and none has the `redir`
//! expression, so the few messages are encoded here; the socket is
//! `netlink-sys`.
//!
//! Idempotent: installing sends "add table, delete table, add table,
//! chain, rule" in one batch, so a rerun (an init container restarted)
//! replaces the table with the same content; removing sends "add table,
//! delete table", which succeeds whether or not it was there and leaves no
//! rule naming either port.

use std::io;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

/// What to redirect: inbound TCP to `app_port` goes to `agent_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// The port clients dial (the app's).
    pub app_port: u16,
    /// The port the agent listens on.
    pub agent_port: u16,
}

/// Why the rules could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// The two ports are the same, or zero.
    #[error(
        "--app-port {app_port} and --agent-port {agent_port} must be two different, non-zero ports"
    )]
    Ports {
        /// `--app-port`.
        app_port: u16,
        /// `--agent-port`.
        agent_port: u16,
    },
    /// No netlink socket to the kernel's netfilter.
    #[error("opening a netfilter netlink socket")]
    Socket(#[source] io::Error),
    /// The kernel refused a step of the batch (nothing was changed).
    #[error("the kernel refused to {step}{hint}")]
    Refused {
        /// What the refused message asked for.
        step: &'static str,
        /// Advice for the common causes.
        hint: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The kernel did not acknowledge every message.
    #[error("the kernel acknowledged {got} of {expected} nftables messages")]
    Unacknowledged {
        /// Acknowledgements received.
        got: usize,
        /// Messages sent that asked for one.
        expected: usize,
    },
}

/// The nftables table that holds the redirect for `app_port`.
pub fn table_name(app_port: u16) -> String {
    format!("goaway_{app_port}")
}

/// Installs (or replaces) the redirect in the current network namespace.
pub fn install(redirect: Redirect) -> Result<(), InterceptError> {
    check(redirect)?;
    send(&install_batch(redirect))
}

/// Removes the redirect for `redirect.app_port`, if there is one.
pub fn remove(redirect: Redirect) -> Result<(), InterceptError> {
    check(redirect)?;
    send(&remove_batch(redirect.app_port))
}

fn check(r: Redirect) -> Result<(), InterceptError> {
    if r.app_port == 0 || r.agent_port == 0 || r.app_port == r.agent_port {
        return Err(InterceptError::Ports {
            app_port: r.app_port,
            agent_port: r.agent_port,
        });
    }
    Ok(())
}

// Constants from <linux/netlink.h>, <linux/netfilter/nfnetlink.h> and
// <linux/netfilter/nf_tables.h>; they are kernel ABI.
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_INET: u8 = 1;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_PRE_ROUTING: u32 = 0;
/// `priority dstnat + 10`: after iptables' `nat PREROUTING` (a mesh's
/// capture rule) at `dstnat` (-100), see the module docs.
const PRIORITY: i32 = -100 + 10;
const NF_ACCEPT: u32 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_REG_1: u32 = 1;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_REDIR_REG_PROTO_MIN: u16 = 1;
const NFTA_REDIR_FLAGS: u16 = 3;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const IPPROTO_TCP: u8 = 6;
/// The TCP destination port's offset in the TCP header.
const TCP_DPORT_OFFSET: u32 = 2;

const CHAIN: &str = "prerouting";

/// A batch of nftables netlink messages, and what each one asked for.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// `(seq, step)` of every message that asks for an acknowledgement.
    steps: Vec<(u32, &'static str)>,
}

impl Batch {
    fn new() -> Self {
        let mut batch = Batch {
            buf: Vec::with_capacity(512),
            seq: 0,
            steps: Vec::new(),
        };
        let start = batch.header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        batch.finish(start);
        batch
    }

    /// Appends an nlmsghdr and an nfgenmsg; returns the message's start.
    fn header(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.seq += 1;
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by finish
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    /// Starts an nftables message that the kernel acknowledges.
    fn message(&mut self, msg: u16, extra_flags: u16, step: &'static str) -> usize {
        let start = self.header(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | NLM_F_ACK | extra_flags,
            NFPROTO_INET,
            0,
        );
        self.steps.push((self.seq, step));
        start
    }

    fn finish(&mut self, start: usize) {
        let len = u32::try_from(self.buf.len() - start).expect("a small message");
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = u16::try_from(4 + payload.len()).expect("a small attribute");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    fn attr_str(&mut self, ty: u16, s: &str) {
        let mut bytes = Vec::with_capacity(s.len() + 1);
        bytes.extend_from_slice(s.as_bytes());
        bytes.push(0);
        self.attr(ty, &bytes);
    }

    fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    fn nest(&mut self, ty: u16, body: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        body(self);
        let len = u16::try_from(self.buf.len() - start).expect("a small attribute");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// One expression of a rule: its name and its attributes.
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Self)) {
        self.nest(NFTA_LIST_ELEM, |b| {
            b.attr_str(NFTA_EXPR_NAME, name);
            b.nest(NFTA_EXPR_DATA, data);
        });
    }

    fn table(&mut self, msg: u16, flags: u16, table: &str, step: &'static str) {
        let start = self.message(msg, flags, step);
        self.attr_str(NFTA_TABLE_NAME, table);
        self.finish(start);
    }

    fn end(mut self) -> Self {
        let start = self.header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        self.finish(start);
        self
    }
}

fn install_batch(r: Redirect) -> Batch {
    let table = table_name(r.app_port);
    let mut b = Batch::new();
    // add + delete + add: replaces a table left by an earlier run, in the
    // same transaction.
    b.table(NFT_MSG_NEWTABLE, NLM_F_CREATE, &table, "create the table");
    b.table(NFT_MSG_DELTABLE, 0, &table, "replace the table");
    b.table(NFT_MSG_NEWTABLE, NLM_F_CREATE, &table, "create the table");

    let start = b.message(
        NFT_MSG_NEWCHAIN,
        NLM_F_CREATE,
        "create a nat prerouting chain",
    );
    b.attr_str(NFTA_CHAIN_TABLE, &table);
    b.attr_str(NFTA_CHAIN_NAME, CHAIN);
    b.nest(NFTA_CHAIN_HOOK, |b| {
        b.attr_u32(NFTA_HOOK_HOOKNUM, NF_INET_PRE_ROUTING);
        b.attr(NFTA_HOOK_PRIORITY, &PRIORITY.to_be_bytes());
    });
    b.attr_u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
    b.attr_str(NFTA_CHAIN_TYPE, "nat");
    b.finish(start);

    // tcp dport <app> redirect to :<agent>
    let start = b.message(
        NFT_MSG_NEWRULE,
        NLM_F_CREATE | NLM_F_APPEND,
        "add the redirect rule",
    );
    b.attr_str(NFTA_RULE_TABLE, &table);
    b.attr_str(NFTA_RULE_CHAIN, CHAIN);
    b.nest(NFTA_RULE_EXPRESSIONS, |b| {
        b.expr("meta", |b| {
            b.attr_u32(NFTA_META_KEY, NFT_META_L4PROTO);
            b.attr_u32(NFTA_META_DREG, NFT_REG_1);
        });
        b.expr("cmp", |b| {
            b.attr_u32(NFTA_CMP_SREG, NFT_REG_1);
            b.attr_u32(NFTA_CMP_OP, NFT_CMP_EQ);
            b.nest(NFTA_CMP_DATA, |b| b.attr(NFTA_DATA_VALUE, &[IPPROTO_TCP]));
        });
        b.expr("payload", |b| {
            b.attr_u32(NFTA_PAYLOAD_DREG, NFT_REG_1);
            b.attr_u32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER);
            b.attr_u32(NFTA_PAYLOAD_OFFSET, TCP_DPORT_OFFSET);
            b.attr_u32(NFTA_PAYLOAD_LEN, 2);
        });
        b.expr("cmp", |b| {
            b.attr_u32(NFTA_CMP_SREG, NFT_REG_1);
            b.attr_u32(NFTA_CMP_OP, NFT_CMP_EQ);
            b.nest(NFTA_CMP_DATA, |b| {
                b.attr(NFTA_DATA_VALUE, &r.app_port.to_be_bytes());
            });
        });
        b.expr("immediate", |b| {
            b.attr_u32(NFTA_IMMEDIATE_DREG, NFT_REG_1);
            b.nest(NFTA_IMMEDIATE_DATA, |b| {
                b.attr(NFTA_DATA_VALUE, &r.agent_port.to_be_bytes());
            });
        });
        b.expr("redir", |b| {
            b.attr_u32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1);
            b.attr_u32(NFTA_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
        });
    });
    b.finish(start);
    b.end()
}

fn remove_batch(app_port: u16) -> Batch {
    let table = table_name(app_port);
    let mut b = Batch::new();
    b.table(NFT_MSG_NEWTABLE, NLM_F_CREATE, &table, "create the table");
    b.table(NFT_MSG_DELTABLE, 0, &table, "delete the table");
    b.end()
}

/// Sends the batch and reads one acknowledgement per message.
fn send(batch: &Batch) -> Result<(), InterceptError> {
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(InterceptError::Socket)?;
    socket.bind_auto().map_err(InterceptError::Socket)?;
    socket.send(&batch.buf, 0).map_err(InterceptError::Socket)?;
    // The kernel runs the whole batch inside the send and queues every
    // answer before it returns; reading without waiting cannot hang.
    socket
        .set_non_blocking(true)
        .map_err(InterceptError::Socket)?;
    let mut acked = 0;
    let mut buf = vec![0u8; 16 * 1024];
    while acked < batch.steps.len() {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(InterceptError::Socket(e)),
        };
        for (seq, errno) in acks(&buf[..n]) {
            if errno != 0 {
                let step = batch
                    .steps
                    .iter()
                    .find(|(s, _)| *s == seq)
                    .map_or("apply the batch", |(_, step)| step);
                return Err(refused(step, errno));
            }
            acked += 1;
        }
    }
    if acked < batch.steps.len() {
        return Err(InterceptError::Unacknowledged {
            got: acked,
            expected: batch.steps.len(),
        });
    }
    Ok(())
}

fn refused(step: &'static str, errno: i32) -> InterceptError {
    let hint = match errno {
        libc::EPERM => {
            " (needs CAP_NET_ADMIN in the pod's network namespace: the init container's \
             securityContext must add NET_ADMIN and run as user 0)"
        }
        libc::EOPNOTSUPP | libc::ENOENT | libc::EAFNOSUPPORT => {
            " (does the node's kernel have nf_tables with NAT and redir: \
             nft_chain_nat, nft_redir?)"
        }
        _ => "",
    };
    InterceptError::Refused {
        step,
        hint,
        source: io::Error::from_raw_os_error(errno),
    }
}

/// The `(seq, errno)` of every NLMSG_ERROR (an acknowledgement when errno
/// is 0) in a buffer of netlink messages.
fn acks(mut buf: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
        if len < 16 || len > buf.len() {
            break;
        }
        if ty == NLMSG_ERROR && len >= 20 {
            let error = i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
            out.push((seq, -error));
        }
        buf = &buf[(len + 3) & !3..];
        if buf.len() < 16 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An expression's name and attributes.
    type Expr = (String, Vec<(u16, Vec<u8>)>);

    /// Walks a batch's messages: (type, flags, seq, body after nfgenmsg).
    fn messages(buf: &[u8]) -> Vec<(u16, u16, u32, &[u8])> {
        let mut out = Vec::new();
        let mut rest = buf;
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            assert!(
                len >= 20 && len <= rest.len() && len.is_multiple_of(4),
                "len {len}"
            );
            let ty = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
            let flags = u16::from_ne_bytes(rest[6..8].try_into().unwrap());
            let seq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
            out.push((ty, flags, seq, &rest[20..len]));
            rest = &rest[len..];
        }
        out
    }

    /// The attributes in `body`: (type without the nested flag, payload).
    fn attrs(mut body: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        while !body.is_empty() {
            let len = u16::from_ne_bytes(body[0..2].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(body[2..4].try_into().unwrap());
            assert!(len >= 4 && len <= body.len(), "attribute length {len}");
            out.push((ty & !NLA_F_NESTED, &body[4..len]));
            body = &body[((len + 3) & !3).min(body.len())..];
        }
        out
    }

    #[test]
    fn install_is_one_transaction_that_replaces_the_table() {
        let r = Redirect {
            app_port: 50051,
            agent_port: 15001,
        };
        let batch = install_batch(r);
        let msgs = messages(&batch.buf);
        let types: Vec<u16> = msgs.iter().map(|m| m.0).collect();
        let nft = |m| (NFNL_SUBSYS_NFTABLES << 8) | m;
        assert_eq!(
            types,
            [
                NFNL_MSG_BATCH_BEGIN,
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_DELTABLE),
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_NEWCHAIN),
                nft(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END,
            ]
        );
        // Every nftables message asks for an acknowledgement; the batch
        // markers do not.
        for (ty, flags, _, _) in &msgs {
            let is_marker = *ty == NFNL_MSG_BATCH_BEGIN || *ty == NFNL_MSG_BATCH_END;
            assert_eq!(flags & NLM_F_ACK != 0, !is_marker, "{ty:#x}");
        }
        assert_eq!(batch.steps.len(), 5);
        let table = attrs(msgs[1].3);
        assert_eq!(table, [(NFTA_TABLE_NAME, &b"goaway_50051\0"[..])]);
    }

    #[test]
    fn the_rule_matches_the_app_port_and_redirects_to_the_agent_port() {
        let batch = install_batch(Redirect {
            app_port: 50051,
            agent_port: 15001,
        });
        let msgs = messages(&batch.buf);
        let rule = attrs(msgs[5].3);
        let exprs = rule
            .iter()
            .find(|(t, _)| *t == NFTA_RULE_EXPRESSIONS)
            .unwrap()
            .1;
        let exprs: Vec<Expr> = attrs(exprs)
            .into_iter()
            .map(|(_, e)| {
                let e = attrs(e);
                let name = std::str::from_utf8(e[0].1)
                    .unwrap()
                    .trim_end_matches('\0')
                    .to_string();
                let data = attrs(e[1].1)
                    .into_iter()
                    .map(|(t, v)| (t, v.to_vec()))
                    .collect();
                (name, data)
            })
            .collect();
        let names: Vec<&str> = exprs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["meta", "cmp", "payload", "cmp", "immediate", "redir"]
        );
        // The second cmp holds the app port, the immediate the agent
        // port, both in network order inside a nested data value.
        let value = |expr: &Expr, ty: u16| {
            let nested = &expr.1.iter().find(|(t, _)| *t == ty).unwrap().1;
            attrs(nested)[0].1.to_vec()
        };
        assert_eq!(value(&exprs[3], NFTA_CMP_DATA), 50051u16.to_be_bytes());
        assert_eq!(
            value(&exprs[4], NFTA_IMMEDIATE_DATA),
            15001u16.to_be_bytes()
        );
        assert_eq!(value(&exprs[1], NFTA_CMP_DATA), [IPPROTO_TCP]);
    }

    #[test]
    fn remove_only_deletes_the_app_ports_table() {
        let batch = remove_batch(8080);
        let msgs = messages(&batch.buf);
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[2].0, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE);
        assert_eq!(attrs(msgs[2].3), [(NFTA_TABLE_NAME, &b"goaway_8080\0"[..])]);
    }

    #[test]
    fn same_or_zero_ports_are_refused_before_touching_the_kernel() {
        for (app_port, agent_port) in [(8080, 8080), (0, 15001), (8080, 0)] {
            let err = install(Redirect {
                app_port,
                agent_port,
            })
            .unwrap_err();
            assert!(matches!(err, InterceptError::Ports { .. }), "{err}");
        }
    }

    #[test]
    fn acknowledgements_and_errors_are_read_by_sequence_number() {
        let mut buf = Vec::new();
        for (seq, error) in [(3u32, 0i32), (4, -libc::EPERM)] {
            buf.extend_from_slice(&36u32.to_ne_bytes());
            buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&error.to_ne_bytes());
            buf.extend_from_slice(&[0u8; 16]); // the echoed header
        }
        assert_eq!(acks(&buf), [(3, 0), (4, libc::EPERM)]);
        let err = refused("add the redirect rule", libc::EPERM);
        assert!(err.to_string().contains("NET_ADMIN"), "{err}");
        // A truncated message is not read past.
        assert_eq!(acks(&buf[..40]), [(3, 0)]);
    }
}
