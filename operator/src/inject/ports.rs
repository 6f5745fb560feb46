//! The application port: finding it and taking over its name.
//!
//! Services usually target a named port (`targetPort: grpc`). Moving the
//! name from the application's container port to the agent's sends that
//! traffic through the agent without touching the Service. The kubelet
//! resolves a probe's named port in the probe's own container only, so the
//! owning container's probes and hooks that used the name now say the
//! number and keep reaching the application directly.

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The application port the agent fronts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct AppPort {
    /// The port number the agent forwards to, on the pod IP.
    pub number: i32,
    /// Where it is declared: (container index, port index). A numeric
    /// policy port need not be declared.
    pub declared: Option<(usize, usize)>,
}

/// Finds the policy's port among the application containers. A name must
/// be declared; a number is used as is when undeclared.
/// A TCP declaration wins over another protocol's (a DNS-style app may
/// declare the same number for TCP and UDP).
pub(super) fn find(spec: &PodSpec, port: &IntOrString) -> Option<AppPort> {
    let lookup = |tcp_only: bool| {
        spec.containers
            .iter()
            .enumerate()
            .find_map(|(c, container)| {
                container
                    .ports
                    .iter()
                    .flatten()
                    .enumerate()
                    .find_map(|(p, cp)| {
                        let hit = match port {
                            IntOrString::String(name) => cp.name.as_deref() == Some(name.as_str()),
                            IntOrString::Int(n) => cp.container_port == *n,
                        };
                        let tcp = cp.protocol.as_deref().is_none_or(|p| p == "TCP");
                        (hit && (tcp || !tcp_only)).then_some((c, p, cp.container_port))
                    })
            })
    };
    let declared = lookup(true).or_else(|| lookup(false));
    match (declared, port) {
        (Some((c, p, number)), _) => Some(AppPort {
            number,
            declared: Some((c, p)),
        }),
        (None, IntOrString::Int(n)) => Some(AppPort {
            number: *n,
            declared: None,
        }),
        (None, IntOrString::String(_)) => None,
    }
}

/// The application containers that declare a port named `name` (the API
/// server only warns about duplicates).
pub(super) fn declaring_name(spec: &PodSpec, name: &str) -> Vec<String> {
    spec.containers
        .iter()
        .filter(|c| {
            c.ports
                .iter()
                .flatten()
                .any(|p| p.name.as_deref() == Some(name))
        })
        .map(|c| c.name.clone())
        .collect()
}

/// The container (application or init) that declares `port`, if any.
pub(super) fn user_of(spec: &PodSpec, port: i32) -> Option<String> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.ports.iter().flatten().any(|p| p.container_port == port))
        .map(|c| c.name.clone())
}

/// Removes the name from the application's port, rewrites the owning
/// container's probes and hooks that used it to the number, and returns
/// the name for the agent's port.
pub(super) fn take_over(spec: &mut PodSpec, app: &AppPort) -> Option<String> {
    let (c, p) = app.declared?;
    let container = spec.containers.get_mut(c)?;
    let name = container.ports.as_mut()?.get_mut(p)?.name.take()?;
    rewrite_named_port(container, &name, app.number);
    Some(name)
}

fn rewrite_named_port(container: &mut Container, name: &str, number: i32) {
    let fix = |port: &mut IntOrString| {
        if matches!(port, IntOrString::String(s) if s == name) {
            *port = IntOrString::Int(number);
        }
    };
    let probes = [
        container.liveness_probe.as_mut(),
        container.readiness_probe.as_mut(),
        container.startup_probe.as_mut(),
    ];
    for Probe {
        http_get,
        tcp_socket,
        ..
    } in probes.into_iter().flatten()
    {
        if let Some(h) = http_get {
            fix(&mut h.port);
        }
        if let Some(t) = tcp_socket {
            fix(&mut t.port);
        }
    }
    if let Some(lifecycle) = container.lifecycle.as_mut() {
        let hooks = [lifecycle.post_start.as_mut(), lifecycle.pre_stop.as_mut()];
        for LifecycleHandler {
            http_get,
            tcp_socket,
            ..
        } in hooks.into_iter().flatten()
        {
            if let Some(h) = http_get {
                fix(&mut h.port);
            }
            if let Some(t) = tcp_socket {
                fix(&mut t.port);
            }
        }
    }
}
