//! The pods the webhook asks the API server about, with a dry run, before
//! it gives a namespace redirect interception (`webhook::redirect_probe`,
//! docs/design.md §10.2).
//!
//! Two pods, alike but for redirect's init container: one with the
//! `goaway-intercept` container exactly as injection builds it, one
//! without. Only "without admitted, with refused" says the namespace
//! refuses that container; a refusal of both is about something else.
//! So the rest of the pod should pass what admission commonly asks of any
//! pod: its one container is the agent image (a registry policy that
//! admits the injected agent admits it), runs as the agent does (non-root,
//! every capability dropped, no privilege escalation, the runtime's
//! seccomp profile: Pod Security `restricted`), with the agent's
//! resources, and no ServiceAccount token is mounted.
//!
//! Probe pods are never stored (dry runs), opt out of goaway's own webhook
//! and carry [`PROBE_NAME_PREFIX`] and [`LABEL_PROBE`], the only pods the
//! chart's admission policy lets the operator's account create.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, Pod, PodSpec, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::ports::AppPort;
use super::sidecar::{self, AGENT_UID, AgentConfig};
use super::{ANNOTATION_INJECT, LABEL_INJECT, LABEL_INJECT_DISABLED};
use crate::crd::DEFAULT_AGENT_PORT;

/// How every probe pod's name begins.
pub const PROBE_NAME_PREFIX: &str = "goaway-redirect-probe-";
/// The label every probe pod carries, with the value [`LABEL_PROBE_VALUE`].
pub const LABEL_PROBE: &str = "goaway.dev/redirect-probe";
/// [`LABEL_PROBE`]'s value.
pub const LABEL_PROBE_VALUE: &str = "true";
/// The app port the probe's init container names (any port would do:
/// admission judges the container's privileges, not its arguments).
const PROBE_APP_PORT: i32 = 8080;
/// The name of the probe's one container.
const PROBE_CONTAINER_NAME: &str = "probe";

/// A probe pod named `name` ([`PROBE_NAME_PREFIX`] and a suffix), with
/// redirect's init container when `with_intercept`.
pub fn redirect_probe_pod(agent: &AgentConfig, name: &str, with_intercept: bool) -> Pod {
    let app = AppPort {
        number: PROBE_APP_PORT,
        declared: None,
    };
    let init_containers = with_intercept.then(|| {
        vec![sidecar::intercept_container(
            agent,
            i32::from(DEFAULT_AGENT_PORT),
            &app,
        )]
    });
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                [
                    (LABEL_PROBE.to_string(), LABEL_PROBE_VALUE.to_string()),
                    (LABEL_INJECT.to_string(), LABEL_INJECT_DISABLED.to_string()),
                ]
                .into(),
            ),
            annotations: Some(
                [(
                    ANNOTATION_INJECT.to_string(),
                    LABEL_INJECT_DISABLED.to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            automount_service_account_token: Some(false),
            init_containers,
            containers: vec![Container {
                name: PROBE_CONTAINER_NAME.into(),
                image: Some(agent.image.clone()),
                image_pull_policy: Some(agent.image_pull_policy.clone()),
                args: Some(vec!["--version".into()]),
                resources: agent.resources(),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    privileged: Some(false),
                    read_only_root_filesystem: Some(true),
                    run_as_non_root: Some(true),
                    run_as_user: Some(AGENT_UID),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        add: None,
                    }),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        localhost_profile: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::{INTERCEPT_CONTAINER_NAME, mutate, skip_reason};
    use crate::{KeepalivePolicy, PolicyDefaults};
    use std::sync::Arc;

    #[test]
    fn the_probe_carries_the_intercept_container_as_injection_builds_it() {
        let agent = AgentConfig::default();
        let with = redirect_probe_pod(&agent, "goaway-redirect-probe-1", true);
        let without = redirect_probe_pod(&agent, "goaway-redirect-probe-1", false);
        // Alike but for the init container.
        let mut stripped = with.clone();
        stripped.spec.as_mut().unwrap().init_containers = None;
        assert_eq!(stripped, without);

        // A pod injected in redirect mode gets the same container, ports
        // aside.
        let policy: KeepalivePolicy = serde_yaml::from_str(
            "metadata: {name: p, namespace: ns}\nspec: {selector: {matchLabels: {app: a}}, port: grpc, interception: redirect}\n",
        )
        .unwrap();
        let pod: Pod = serde_yaml::from_str(
            "metadata: {labels: {app: a}}\nspec: {containers: [{name: app, image: app, ports: [{name: grpc, containerPort: 9000}]}]}\n",
        )
        .unwrap();
        let spec = pod.spec.clone().unwrap();
        let mutation = mutate(
            &pod.metadata,
            &spec,
            "ns",
            &[Arc::new(policy)],
            &PolicyDefaults::default(),
            &agent,
            "t",
        )
        .unwrap();
        let mut injected = serde_json::to_value(&pod).unwrap();
        json_patch::patch(&mut injected, &mutation.patch).unwrap();
        let injected: Pod = serde_json::from_value(injected).unwrap();
        let find = |p: &Pod| {
            p.spec
                .as_ref()
                .unwrap()
                .init_containers
                .iter()
                .flatten()
                .find(|c| c.name == INTERCEPT_CONTAINER_NAME)
                .cloned()
                .unwrap()
        };
        let (mut probed, real) = (find(&with), find(&injected));
        assert_eq!(probed.security_context, real.security_context);
        assert_eq!(
            probed.security_context.as_ref().unwrap().capabilities,
            Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["NET_ADMIN".into()]),
            })
        );
        probed.args = real.args.clone();
        assert_eq!(probed, real);
    }

    #[test]
    fn probe_pods_are_named_labelled_and_opted_out_of_injection() {
        let pod = redirect_probe_pod(&AgentConfig::default(), "goaway-redirect-probe-1", true);
        assert!(
            pod.metadata
                .name
                .as_deref()
                .unwrap()
                .starts_with(PROBE_NAME_PREFIX)
        );
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(
            labels.get(LABEL_PROBE).map(String::as_str),
            Some(LABEL_PROBE_VALUE)
        );
        assert_eq!(
            skip_reason(&pod.metadata, pod.spec.as_ref().unwrap()),
            Some(crate::inject::Skip::OptedOut)
        );
    }
}
