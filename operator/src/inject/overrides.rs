//! Per-workload agent settings (docs/design.md §9.4): pod annotations that
//! override the operator-wide [`AgentConfig`] for one pod, as Linkerd's
//! `config.linkerd.io/proxy-cpu-request` and Istio's
//! `sidecar.istio.io/proxyCPU` do.
//!
//! Every value is checked here, the way the API server or the agent would
//! check it, so that a bad annotation never produces a pod the API server
//! refuses or an agent that exits: [`apply`] fails instead, naming the
//! annotation, and the webhook admits the pod unchanged with an Event.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{AgentConfig, InjectError};
use crate::quantity;

/// The agent container's CPU request.
pub const CPU_REQUEST: &str = "goaway.dev/agent-cpu-request";
/// The agent container's CPU limit.
pub const CPU_LIMIT: &str = "goaway.dev/agent-cpu-limit";
/// The agent container's memory request.
pub const MEMORY_REQUEST: &str = "goaway.dev/agent-memory-request";
/// The agent container's memory limit.
pub const MEMORY_LIMIT: &str = "goaway.dev/agent-memory-limit";
/// The agent's log filter (`GOAWAY_LOG`): a level (`debug`) or
/// `tracing` directives (`info,goaway_transport=debug`).
pub const LOG_LEVEL: &str = "goaway.dev/agent-log-level";
/// The agent's `--max-concurrent-streams` (0: no limit).
pub const MAX_CONCURRENT_STREAMS: &str = "goaway.dev/agent-max-concurrent-streams";
/// The agent's `--max-connections`.
pub const MAX_CONNECTIONS: &str = "goaway.dev/agent-max-connections";
/// The agent's `--forwarded-for`: `append` (the client's address after
/// any `x-forwarded-for` entries it sent) or `off`.
pub const FORWARDED_FOR: &str = "goaway.dev/agent-forwarded-for";

/// Every override annotation, for documentation and tests.
pub const ALL: [&str; 8] = [
    CPU_REQUEST,
    CPU_LIMIT,
    MEMORY_REQUEST,
    MEMORY_LIMIT,
    LOG_LEVEL,
    MAX_CONCURRENT_STREAMS,
    MAX_CONNECTIONS,
    FORWARDED_FOR,
];

/// The operator-wide settings with the pod's annotations applied.
pub fn apply(meta: &ObjectMeta, base: &AgentConfig) -> Result<AgentConfig, InjectError> {
    let mut agent = base.clone();
    let Some(annotations) = &meta.annotations else {
        return Ok(agent);
    };
    let invalid =
        |annotation: &'static str, value: &str, reason: String| InjectError::InvalidAnnotation {
            annotation,
            value: value.to_string(),
            reason,
        };
    for (annotation, field) in [
        (CPU_REQUEST, &mut agent.cpu_request),
        (CPU_LIMIT, &mut agent.cpu_limit),
        (MEMORY_REQUEST, &mut agent.memory_request),
        (MEMORY_LIMIT, &mut agent.memory_limit),
    ] {
        if let Some(value) = annotations.get(annotation) {
            let value = value.trim();
            let q =
                quantity::parse(value).map_err(|e| invalid(annotation, value, e.to_string()))?;
            if q.0 < 0 {
                return Err(invalid(annotation, value, "must not be negative".into()));
            }
            *field = value.to_string();
        }
    }
    for (resource, request, limit, names) in [
        (
            "CPU",
            &agent.cpu_request,
            &agent.cpu_limit,
            [CPU_REQUEST, CPU_LIMIT],
        ),
        (
            "memory",
            &agent.memory_request,
            &agent.memory_limit,
            [MEMORY_REQUEST, MEMORY_LIMIT],
        ),
    ] {
        if quantity::request_exceeds_limit(request, limit) {
            // The API server refuses a container whose request exceeds its
            // limit; at least one of the two came from an annotation.
            let (annotation, value) = if annotations.contains_key(names[0]) {
                (names[0], request)
            } else {
                (names[1], limit)
            };
            return Err(invalid(
                annotation,
                value,
                format!("the {resource} request {request} exceeds the {resource} limit {limit}"),
            ));
        }
    }
    if let Some(value) = annotations.get(LOG_LEVEL) {
        let value = value.trim();
        check_log_filter(value).map_err(|reason| invalid(LOG_LEVEL, value, reason))?;
        agent.log_level = value.to_string();
    }
    if let Some(value) = annotations.get(FORWARDED_FOR) {
        agent.forward_client_address =
            forwarded_for(value.trim()).map_err(|reason| invalid(FORWARDED_FOR, value, reason))?;
    }
    if let Some(value) = annotations.get(MAX_CONCURRENT_STREAMS) {
        agent.max_concurrent_streams = value.trim().parse().map_err(|_| {
            invalid(
                MAX_CONCURRENT_STREAMS,
                value,
                "not a whole number from 0 (no limit) to 4294967295".into(),
            )
        })?;
    }
    if let Some(value) = annotations.get(MAX_CONNECTIONS) {
        agent.max_connections = value
            .trim()
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                invalid(
                    MAX_CONNECTIONS,
                    value,
                    "not a whole number from 1 to 4294967295".into(),
                )
            })?;
    }
    Ok(agent)
}

/// `append` (true) or `off` (false), as the agent's `--forwarded-for`
/// takes them.
pub fn forwarded_for(value: &str) -> Result<bool, String> {
    match value {
        "append" => Ok(true),
        "off" => Ok(false),
        _ => Err("not append or off".into()),
    }
}

/// Whether the agent will accept `value` as its `GOAWAY_LOG` filter: the
/// agent's own parser, whose cost is bounded.
pub fn check_log_filter(value: &str) -> Result<(), String> {
    goaway_transport::log_filter::parse(value)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn no_annotations_keep_the_operator_settings() {
        let base = AgentConfig::default();
        assert_eq!(apply(&ObjectMeta::default(), &base).unwrap(), base);
        assert_eq!(apply(&meta(&[("other", "x")]), &base).unwrap(), base);
    }

    #[test]
    fn every_annotation_overrides_its_setting() {
        let agent = apply(
            &meta(&[
                (CPU_REQUEST, "50m"),
                (CPU_LIMIT, "1"),
                (MEMORY_REQUEST, "64Mi"),
                (MEMORY_LIMIT, " 256Mi "),
                (LOG_LEVEL, "info,goaway_transport=debug"),
                (MAX_CONCURRENT_STREAMS, "0"),
                (MAX_CONNECTIONS, "20000"),
                (FORWARDED_FOR, "off"),
            ]),
            &AgentConfig::default(),
        )
        .unwrap();
        assert_eq!(agent.cpu_request, "50m");
        assert_eq!(agent.cpu_limit, "1");
        assert_eq!(agent.memory_request, "64Mi");
        assert_eq!(agent.memory_limit, "256Mi");
        assert_eq!(agent.log_level, "info,goaway_transport=debug");
        assert_eq!(agent.max_concurrent_streams, 0);
        assert_eq!(agent.max_connections, 20000);
        assert!(!agent.forward_client_address);
    }

    #[test]
    fn invalid_values_name_the_annotation() {
        let base = AgentConfig::default();
        for (annotation, value, says) in [
            (CPU_REQUEST, "lots", "cpu-request"),
            (CPU_LIMIT, "-1", "negative"),
            (MEMORY_LIMIT, "12XB", "memory-limit"),
            // 512Mi over the default 128Mi limit: the API server would
            // refuse the pod.
            (MEMORY_REQUEST, "512Mi", "exceeds"),
            (LOG_LEVEL, "", "empty"),
            (LOG_LEVEL, "info,[{", "log filter"),
            (LOG_LEVEL, &"a=info,".repeat(200), "at most 1024"),
            (MAX_CONCURRENT_STREAMS, "-5", "whole number"),
            (MAX_CONNECTIONS, "0", "from 1"),
            (FORWARDED_FOR, "yes", "append or off"),
        ] {
            let err = apply(&meta(&[(annotation, value)]), &base).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(annotation), "{text}");
            assert!(text.contains(says), "{annotation}={value}: {text}");
        }
    }

    #[test]
    fn a_log_filter_built_to_blow_up_a_regex_is_taken_as_text() {
        // Compiled as a regular expression, this field value took minutes
        // and gigabytes; the agent matches it as plain text.
        let value = "(a|b)*a".to_string() + &"(a|b)".repeat(24);
        let filter = format!("goaway_agent[conn{{peer={value}}}]=trace");
        let agent = apply(&meta(&[(LOG_LEVEL, &filter)]), &AgentConfig::default()).unwrap();
        assert_eq!(agent.log_level, filter);
    }

    #[test]
    fn a_limit_below_the_operator_request_is_refused() {
        let err = apply(&meta(&[(CPU_LIMIT, "5m")]), &AgentConfig::default()).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }
}
