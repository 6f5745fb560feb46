//! Services that reach a policy's pods around the agent
//! (docs/design.md §10.3).
//!
//! In `namedPort` interception the agent owns the app port's *name*: a
//! Service whose targetPort is that name goes through it. Two kinds of
//! Service still reach the app port directly:
//! - a numeric targetPort (or none, which means the Service's own port)
//!   equal to the app's port number;
//! - a headless Service (`clusterIP: None`) for the app port: its clients
//!   resolve pod IPs and dial the port they were configured with, which is
//!   the app's (client-side round-robin, `dns:///svc:50051`).
//!
//! In `redirect` interception the kernel sends every inbound connection
//! for the app port to the agent, whatever the client dialled: no Service
//! bypasses it.
//!
//! Each pod is judged in the mode it runs in: a pod with the
//! `goaway-intercept` init container is in redirect mode, a pod with only
//! the agent in namedPort mode, whatever the policy says now (it changes
//! only for new pods); a pod not injected yet in the policy's mode.
//!
//! [`bypassing`] is pure: the reconciler lists the namespace's Services
//! and the policy's matched pods and reports what it returns.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::crd::Interception;
use crate::inject::{self, CONTAINER_NAME, INTERCEPT_CONTAINER_NAME};

/// One Service that bypasses the agent, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bypass {
    /// The Service's name.
    pub service: String,
    /// How it reaches the app port, for the condition's message.
    pub how: String,
}

/// The Services (sorted by name) whose traffic for the app port of pods
/// in `pods` (the policy's matched pods) does not go through the agent;
/// `mode` is the policy's, for pods not injected yet.
pub fn bypassing(
    services: &[Service],
    pods: &[Pod],
    port: &IntOrString,
    mode: Interception,
) -> Vec<Bypass> {
    let pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| mode_of(p).unwrap_or(mode) == Interception::NamedPort)
        .collect();
    let mut found = BTreeMap::new();
    for service in services {
        let Some(spec) = &service.spec else { continue };
        // Services without a selector have hand-made endpoints: not ours
        // to judge.
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let headless = spec.cluster_ip.as_deref() == Some("None");
        for pod in &pods {
            let labels = pod.labels();
            if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                continue;
            }
            let Some(app_port) = pod
                .spec
                .as_ref()
                .and_then(|spec| inject::app_port(spec, port))
            else {
                continue;
            };
            for sp in spec.ports.iter().flatten() {
                if sp.protocol.as_deref().is_some_and(|p| p != "TCP") {
                    continue;
                }
                let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
                let how = match (&target, headless) {
                    (IntOrString::Int(n), false) if *n == app_port => {
                        format!("targetPort {n} is the app port's number")
                    }
                    (IntOrString::Int(n), true) if *n == app_port || sp.port == app_port => {
                        format!("headless: clients dial pod IPs at port {}", sp.port)
                    }
                    (IntOrString::String(name), true) if matches!(port, IntOrString::String(p) if p == name) =>
                    {
                        format!("headless: clients dial pod IPs at port {}", sp.port)
                    }
                    _ => continue,
                };
                found.entry(service.name_any()).or_insert(how);
            }
        }
    }
    found
        .into_iter()
        .map(|(service, how)| Bypass { service, how })
        .collect()
}

/// The mode `pod` was injected in; `None` when it has no agent.
fn mode_of(pod: &Pod) -> Option<Interception> {
    let inits = pod.spec.as_ref()?.init_containers.as_deref()?;
    if inits.iter().any(|c| c.name == INTERCEPT_CONTAINER_NAME) {
        Some(Interception::Redirect)
    } else if inits.iter().any(|c| c.name == CONTAINER_NAME) {
        Some(Interception::NamedPort)
    } else {
        None
    }
}

/// The condition message for `found`; `redirect_allowed` is false when
/// the operator forbids redirect interception (`--forbid-redirect`), which
/// then is no way out.
pub fn message(found: &[Bypass], redirect_allowed: bool) -> String {
    let list: Vec<String> = found
        .iter()
        .map(|b| format!("{} ({})", b.service, b.how))
        .collect();
    let redirect = if redirect_allowed {
        ", or set spec.interception: redirect (new pods)"
    } else {
        " (redirect interception is forbidden by the operator's --forbid-redirect)"
    };
    format!(
        "Services reach the app port of matched pods in namedPort interception around the agent: \
         {}; their clients get no GOAWAY on drain, no keepalive, no age limit. Give the Service \
         the policy's port name as targetPort (not headless){redirect}",
        list.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    }

    fn pod(labels: serde_json::Value, injected: bool) -> Pod {
        let mut spec = json!({"containers": [{"name": "app",
            "ports": [{"name": if injected { serde_json::Value::Null } else { json!("grpc") },
                       "containerPort": 50051}]}]});
        if injected {
            spec["initContainers"] = json!([{"name": "goaway-agent", "ports": [
                {"name": "grpc", "containerPort": 15051}],
                "args": ["run", "--listen", "0.0.0.0:15051", "--upstream", "127.0.0.1:50051"]}]);
        }
        serde_json::from_value(json!({"metadata": {"name": "p", "labels": labels}, "spec": spec}))
            .unwrap()
    }

    fn names(found: &[Bypass]) -> Vec<&str> {
        found.iter().map(|b| b.service.as_str()).collect()
    }

    #[test]
    fn numeric_target_ports_and_headless_services_bypass_a_named_port() {
        let services = [
            service(
                "named",
                json!({"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": "grpc"}]}),
            ),
            service(
                "numeric",
                json!({"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 50051}]}),
            ),
            service(
                "implicit",
                json!({"selector": {"app": "api"}, "ports": [{"port": 50051}]}),
            ),
            service(
                "headless",
                json!({"selector": {"app": "api"}, "clusterIP": "None",
                       "ports": [{"port": 50051, "targetPort": "grpc"}]}),
            ),
            service(
                "agent-port",
                json!({"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 15051}]}),
            ),
            service(
                "metrics",
                json!({"selector": {"app": "api"}, "clusterIP": "None",
                       "ports": [{"port": 9090}]}),
            ),
            service(
                "other-app",
                json!({"selector": {"app": "web"}, "ports": [{"port": 50051}]}),
            ),
            service("no-selector", json!({"ports": [{"port": 50051}]})),
        ];
        let port = IntOrString::String("grpc".into());
        for injected in [false, true] {
            let pods = [pod(json!({"app": "api", "tier": "x"}), injected)];
            let found = bypassing(&services, &pods, &port, Interception::NamedPort);
            assert_eq!(
                names(&found),
                ["headless", "implicit", "numeric"],
                "injected: {injected}"
            );
            // A policy now in redirect mode: pods injected earlier in
            // namedPort mode still bypass; pods not injected yet will not.
            assert_eq!(
                names(&bypassing(&services, &pods, &port, Interception::Redirect)).len(),
                if injected { 3 } else { 0 },
                "injected: {injected}"
            );
        }
        // A pod injected in redirect mode takes every connection.
        let mut redirected = pod(json!({"app": "api"}), true);
        let spec = redirected.spec.as_mut().unwrap();
        spec.init_containers.as_mut().unwrap().insert(
            0,
            serde_json::from_value(json!({"name": "goaway-intercept"})).unwrap(),
        );
        for mode in [Interception::NamedPort, Interception::Redirect] {
            assert!(bypassing(&services, &[redirected.clone()], &port, mode).is_empty());
        }
    }

    #[test]
    fn services_that_select_no_matched_pod_are_not_reported() {
        let services = [service(
            "numeric",
            json!({"selector": {"app": "api", "track": "canary"},
                   "ports": [{"port": 80, "targetPort": 50051}]}),
        )];
        let pods = [pod(json!({"app": "api"}), true)];
        let port = IntOrString::Int(50051);
        assert!(bypassing(&services, &pods, &port, Interception::NamedPort).is_empty());
        let found = [Bypass {
            service: "numeric".into(),
            how: "targetPort 50051 is the app port's number".into(),
        }];
        let advice = message(&found, true);
        assert!(advice.contains("numeric (targetPort 50051"), "{advice}");
        assert!(
            advice.contains("set spec.interception: redirect"),
            "{advice}"
        );
        // Not advice the operator would not follow.
        let forbidden = message(&found, false);
        assert!(!forbidden.contains("set spec.interception"), "{forbidden}");
        assert!(forbidden.contains("--forbid-redirect"), "{forbidden}");
    }
}
