//! `goaway-operator inject --policy POLICY.yaml < manifests.yaml`, like
//! `linkerd inject`: prints the manifests with every pod template a policy
//! selects mutated exactly as the webhook would — through
//! [`inject::mutate`], the webhook's own function, and the very JSON patch
//! it returns — for GitOps and for review.
//!
//! Documents that do not change are printed byte for byte as read,
//! comments included; a changed document is re-serialised (its comments
//! are lost). Running the command on its own output changes nothing: the
//! injected templates carry `goaway.dev/injected`. Each template gets its
//! own random drain token, so two runs on the same input differ in the
//! token only.
//!
//! Templates understood: Pod, Deployment, StatefulSet, DaemonSet,
//! ReplicaSet, ReplicationController, Job, CronJob, and `kind: List`
//! items holding any of them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::inject::{self, AgentConfig, Outcome};
use crate::{Error, KeepalivePolicy, PolicyDefaults, Result};

/// What a run produced.
#[derive(Debug, Default)]
pub struct Report {
    /// The manifests to print.
    pub output: String,
    /// One line per injected template: `Kind/name: policy`.
    pub injected: Vec<String>,
    /// Things the user should know (kept preStop hooks, templates that
    /// could not be injected and were left unchanged).
    pub warnings: Vec<String>,
    /// What was done that the user did not write (sleeping preStop hooks
    /// replaced by the drain).
    pub notes: Vec<String>,
}

/// Parses a file of KeepalivePolicy manifests and validates each, merged
/// with the operator's `defaults` as the webhook would (a policy the
/// webhook would skip is an error here). Policies without a namespace get
/// `namespace`.
pub fn load_policies(
    text: &str,
    namespace: &str,
    defaults: &PolicyDefaults,
) -> Result<Vec<Arc<KeepalivePolicy>>> {
    let mut policies = Vec::new();
    for (i, doc) in split_documents(text).into_iter().enumerate() {
        let value: Value = serde_yaml::from_str(doc.body)
            .map_err(|e| Error::Manifest(format!("policy document {}: {e}", i + 1)))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind != "KeepalivePolicy" {
            return Err(Error::Manifest(format!(
                "policy document {} is a {kind:?}, not a KeepalivePolicy",
                i + 1
            )));
        }
        let mut policy: KeepalivePolicy = serde_json::from_value(value)
            .map_err(|e| Error::Manifest(format!("policy document {}: {e}", i + 1)))?;
        let name = kube::ResourceExt::name_any(&policy);
        // The API server enforces this with the CRD's root rule.
        if name.len() > crate::crd::MAX_POLICY_NAME_LEN {
            return Err(Error::Manifest(format!(
                "KeepalivePolicy {name}: metadata.name must be at most {} characters (its ConfigMap is goaway-<name>)",
                crate::crd::MAX_POLICY_NAME_LEN
            )));
        }
        policy
            .spec
            .check_with(defaults)
            .map_err(|e| Error::Manifest(format!("KeepalivePolicy {name}: {e}")))?;
        policy
            .metadata
            .namespace
            .get_or_insert_with(|| namespace.to_string());
        policies.push(Arc::new(policy));
    }
    Ok(policies)
}

/// Injects every pod template of the manifests in `input`.
pub fn inject_manifests(
    input: &str,
    policies: &[Arc<KeepalivePolicy>],
    namespace: &str,
    defaults: &PolicyDefaults,
    agent: &AgentConfig,
    token: &mut dyn FnMut() -> String,
) -> Result<Report> {
    let mut report = Report::default();
    for (i, doc) in split_documents(input).into_iter().enumerate() {
        report.output.push_str(doc.separator);
        let mut value: Value = serde_yaml::from_str(doc.body)
            .map_err(|e| Error::Manifest(format!("document {}: {e}", i + 1)))?;
        let mut ctx = Ctx {
            policies,
            defaults,
            agent,
            token: &mut *token,
            report: &mut report,
        };
        if !value.is_null() && ctx.object(&mut value, namespace)? {
            report.output.push_str(&to_yaml(value, doc.body)?);
        } else {
            report.output.push_str(doc.body);
        }
    }
    Ok(report)
}

struct Ctx<'a> {
    policies: &'a [Arc<KeepalivePolicy>],
    defaults: &'a PolicyDefaults,
    agent: &'a AgentConfig,
    token: &'a mut dyn FnMut() -> String,
    report: &'a mut Report,
}

impl Ctx<'_> {
    fn object(&mut self, object: &mut Value, default_namespace: &str) -> Result<bool> {
        for_each_template(
            object,
            default_namespace,
            &mut |template, what, namespace| self.template(template, what, namespace),
        )
    }
}

/// Calls `f(template, "Kind/name", namespace)` on the object's pod
/// template(s) (the object itself for a Pod); true when any call changed
/// something.
fn for_each_template(
    object: &mut Value,
    default_namespace: &str,
    f: &mut dyn FnMut(&mut Value, &str, &str) -> Result<bool>,
) -> Result<bool> {
    {
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>")
            .to_string();
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(default_namespace)
            .to_string();
        let path = match kind.as_str() {
            "List" => {
                let mut changed = false;
                if let Some(Value::Array(items)) = object.get_mut("items") {
                    for item in items {
                        changed |= for_each_template(item, default_namespace, f)?;
                    }
                }
                return Ok(changed);
            }
            "Pod" => "",
            "Deployment"
            | "StatefulSet"
            | "DaemonSet"
            | "ReplicaSet"
            | "ReplicationController"
            | "Job" => "/spec/template",
            "CronJob" => "/spec/jobTemplate/spec/template",
            _ => return Ok(false),
        };
        let Some(template) = object.pointer_mut(path) else {
            return Ok(false);
        };
        f(template, &format!("{kind}/{name}"), &namespace)
    }
}

impl Ctx<'_> {
    fn template(&mut self, template: &mut Value, what: &str, namespace: &str) -> Result<bool> {
        let Some(spec) = template.get("spec") else {
            return Ok(false);
        };
        let bad = |e: serde_json::Error| Error::Manifest(format!("{what}: {e}"));
        let spec: PodSpec = serde_json::from_value(spec.clone()).map_err(bad)?;
        let meta: ObjectMeta = match template.get("metadata") {
            Some(m) if !m.is_null() => serde_json::from_value(m.clone()).map_err(bad)?,
            _ => ObjectMeta::default(),
        };
        let token = (self.token)();
        let mutation = match inject::mutate(
            &meta,
            &spec,
            namespace,
            self.policies,
            self.defaults,
            self.agent,
            &token,
        ) {
            Ok(m) => m,
            Err(e) => {
                self.report
                    .warnings
                    .push(format!("{what}: not injected: {e}"));
                return Ok(false);
            }
        };
        let injection = match mutation.outcome {
            Outcome::Injected(injection) => injection,
            Outcome::Unchanged(inject::Skip::NoPolicy)
                if !self
                    .policies
                    .iter()
                    .any(|p| p.metadata.namespace.as_deref() == Some(namespace)) =>
            {
                // The likely mistake: the object names another namespace
                // than the policies (or -n) do.
                self.report.warnings.push(format!(
                    "{what}: unchanged: it is in namespace {namespace:?}, where no policy given applies (policies apply in their own namespace; -n sets it for objects and policies that name none)"
                ));
                return Ok(false);
            }
            Outcome::Unchanged(_) => return Ok(false),
            Outcome::RedirectForbidden { policy } => {
                self.report.warnings.push(format!(
                    "{what}: not injected: {}",
                    inject::redirect_forbidden_note(&policy)
                ));
                return Ok(false);
            }
        };
        if let Some(obj) = template.as_object_mut() {
            let meta = obj
                .entry("metadata")
                .or_insert_with(|| Value::Object(Default::default()));
            if meta.is_null() {
                *meta = Value::Object(Default::default());
            }
        }
        json_patch::patch(template, &mutation.patch)
            .map_err(|e| Error::Manifest(format!("{what}: {e}")))?;
        self.report
            .injected
            .push(format!("{what}: {}", injection.policy));
        if injection.pull_secrets_were_empty && !injection.pull_secrets_added.is_empty() {
            // The API server copies a ServiceAccount's imagePullSecrets
            // only into pods that list none; the webhook runs after that.
            self.report.warnings.push(format!(
                "{what}: imagePullSecrets now lists {}; its pods no longer get their ServiceAccount's imagePullSecrets from the API server (it adds them only to pods that list none): list those in the template too if its images need them",
                injection.pull_secrets_added.join(", ")
            ));
        }
        if !injection.replaced_sleep.is_empty() {
            self.report.notes.push(format!(
                "{what}: {}",
                inject::pre_stop::replaced_note(&injection.replaced_sleep)
            ));
        }
        if !injection.kept_pre_stop.is_empty() {
            self.report.warnings.push(format!(
                "{what}: container(s) {} keep their own preStop hook and are not held until the agent has drained; to drain first, {}",
                injection.kept_pre_stop.join(", "),
                crate::inject::KEPT_PRE_STOP_HINT
            ));
        }
        Ok(true)
    }
}

/// `goaway-operator uninject`: removes what injection added from every pod
/// template in `input` — the agent container, the policy volume, the
/// preStop hooks calling `/drain` (a hook that only slept, which
/// injection replaced, comes back as it was), the drain variables, the
/// `imagePullSecrets` injection added (those its annotation names), the
/// `goaway.dev/injected*` annotations — and gives the application port its
/// name back, so Services route to the app again. Two things stay: the
/// raised `terminationGracePeriodSeconds` and the probes and lifecycle
/// hooks that injection rewrote from the port's name to its number (both
/// mean the same for the app; each is named in a warning). Templates without the agent are printed unchanged.
pub fn uninject_manifests(input: &str) -> Result<Report> {
    let mut report = Report::default();
    for (i, doc) in split_documents(input).into_iter().enumerate() {
        report.output.push_str(doc.separator);
        let mut value: Value = serde_yaml::from_str(doc.body)
            .map_err(|e| Error::Manifest(format!("document {}: {e}", i + 1)))?;
        let changed = !value.is_null()
            && for_each_template(&mut value, "default", &mut |template, what, _| {
                let grace = template
                    .pointer("/spec/terminationGracePeriodSeconds")
                    .cloned();
                let mut probes = Vec::new();
                let removed = uninject_template(template, &mut probes);
                if removed {
                    report.injected.push(what.to_string());
                    if let Some(g) = grace {
                        report.warnings.push(format!(
                            "{what}: terminationGracePeriodSeconds stays {g} (injection may have raised it)"
                        ));
                    }
                    for probe in probes {
                        report.warnings.push(format!(
                            "{what}: {probe} (injection rewrites a probe of the port's name to its number; the same port for the app)"
                        ));
                    }
                }
                Ok(removed)
            })?;
        if changed {
            report.output.push_str(&to_yaml(value, doc.body)?);
        } else {
            report.output.push_str(doc.body);
        }
    }
    Ok(report)
}

/// Undoes the injection of one template; false when it had no agent.
/// The probes and hooks left on the app port's number are listed in
/// `probes`.
fn uninject_template(template: &mut Value, probes: &mut Vec<String>) -> bool {
    let Some(spec) = template.get_mut("spec").and_then(Value::as_object_mut) else {
        return false;
    };
    // The agent: which app port it fronted, and the name it took over.
    let Some(Value::Array(inits)) = spec.get_mut("initContainers") else {
        return false;
    };
    // Redirect mode's init container goes with the agent.
    inits.retain(|c| c["name"] != inject::INTERCEPT_CONTAINER_NAME);
    let Some(at) = inits
        .iter()
        .position(|c| c["name"] == inject::CONTAINER_NAME)
    else {
        return false;
    };
    let agent = inits.remove(at);
    if inits.is_empty() {
        spec.remove("initContainers");
    }
    let app_port = inject::upstream_port(
        agent["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str),
    )
    .map(i64::from);
    let taken_name = agent["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .find(|n| *n != inject::ADMIN_PORT_NAME && *n != inject::PROXY_PORT_NAME)
        .map(str::to_string);

    if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
        volumes
            .retain(|v| v["name"] != inject::VOLUME_NAME && v["name"] != inject::TOKEN_VOLUME_NAME);
        if volumes.is_empty() {
            spec.remove("volumes");
        }
    }
    // The preStop hooks that only slept, as they were.
    let replaced: serde_json::Map<String, Value> = template
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(inject::pre_stop::ANNOTATION_REPLACED_PRE_STOP))
        .and_then(Value::as_str)
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let Some(spec) = template.get_mut("spec").and_then(Value::as_object_mut) else {
        return true;
    };
    if let Some(Value::Array(containers)) = spec.get_mut("containers") {
        for c in containers {
            if let (Some(name), Some(port)) = (&taken_name, app_port) {
                // What injection rewrote from the port's name to its number
                // (inject::ports): the httpGet and tcpSocket handlers of
                // probes and lifecycle hooks (a grpc probe's port is always
                // a number).
                for handler in [
                    "/livenessProbe",
                    "/readinessProbe",
                    "/startupProbe",
                    "/lifecycle/postStart",
                    "/lifecycle/preStop",
                ] {
                    for kind in ["httpGet", "tcpSocket"] {
                        let at = format!("{handler}/{kind}/port");
                        if c.pointer(&at).and_then(Value::as_i64) == Some(port) {
                            let container = c["name"].as_str().unwrap_or("?");
                            let what = handler[1..].replace('/', ".");
                            probes.push(format!(
                                "container {container}: {what} stays on port {port}, not {name:?}"
                            ));
                        }
                    }
                }
            }
            let Some(c) = c.as_object_mut() else { continue };
            if let (Some(name), Some(port)) = (&taken_name, app_port)
                && let Some(Value::Array(ports)) = c.get_mut("ports")
            {
                for p in ports {
                    if p["containerPort"].as_i64() == Some(port) && p.get("name").is_none() {
                        p["name"] = Value::String(name.clone());
                    }
                }
            }
            let ours = c
                .get("lifecycle")
                .and_then(|l| l.get("preStop"))
                .and_then(|h| h.get("httpGet"))
                .is_some_and(|g| {
                    g["path"].as_str().is_some_and(|p| {
                        p.strip_prefix(inject::DRAIN_PATH)
                            .is_some_and(|rest| rest.is_empty() || rest.starts_with('?'))
                    }) && g["httpHeaders"].as_array().is_some_and(|hs| {
                        hs.iter().any(|h| {
                            h["name"] == "Authorization"
                                && h["value"]
                                    .as_str()
                                    .is_some_and(|v| v.starts_with("Bearer "))
                        })
                    })
                });
            let original = c
                .get("name")
                .and_then(Value::as_str)
                .and_then(|name| replaced.get(name));
            if let (true, Some(original)) = (ours, original) {
                c.entry("lifecycle")
                    .or_insert_with(|| Value::Object(Default::default()))["preStop"] =
                    original.clone();
            } else if ours && let Some(Value::Object(lifecycle)) = c.get_mut("lifecycle") {
                lifecycle.remove("preStop");
                if lifecycle.is_empty() {
                    c.remove("lifecycle");
                }
            }
            if let Some(Value::Array(env)) = c.get_mut("env") {
                env.retain(|e| {
                    e["name"] != inject::ENV_DRAIN_TOKEN && e["name"] != inject::ENV_DRAIN_URL
                });
                if env.is_empty() {
                    c.remove("env");
                }
            }
        }
    }
    // Only the pull secrets injection added: the annotation names them.
    let added_secrets: Vec<String> = template
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(inject::ANNOTATION_INJECTED_PULL_SECRETS))
        .and_then(Value::as_str)
        .map(|names| names.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    if let Some(spec) = template.get_mut("spec").and_then(Value::as_object_mut)
        && let Some(Value::Array(secrets)) = spec.get_mut("imagePullSecrets")
    {
        secrets.retain(|s| {
            !s["name"]
                .as_str()
                .is_some_and(|n| added_secrets.iter().any(|a| a == n))
        });
        if secrets.is_empty() {
            spec.remove("imagePullSecrets");
        }
    }
    if let Some(Value::Object(annotations)) = template.pointer_mut("/metadata/annotations") {
        annotations.remove(inject::ANNOTATION_INJECTED);
        annotations.remove(inject::ANNOTATION_INJECTED_PULL_SECRETS);
        annotations.remove(inject::pre_stop::ANNOTATION_REPLACED_PRE_STOP);
    }
    if template
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.is_empty())
        && let Some(Value::Object(meta)) = template.get_mut("metadata")
    {
        meta.remove("annotations");
    }
    true
}

/// One YAML document and the separator line before it ("" for the first).
struct Document<'a> {
    separator: &'a str,
    body: &'a str,
}

/// Serialises a changed document so that YAML 1.1 readers see what YAML
/// 1.2 readers see. serde_yaml writes YAML 1.2, where `on`, `yes`, `n`,
/// `1_000` or `10:30` are plain strings; kubectl and most of the
/// Kubernetes toolchain read YAML 1.1, where they are booleans and
/// numbers, and a quoted `"on"` in an argument list would come back as
/// `true`. Such strings are swapped for placeholders serde_yaml writes
/// plain, and the placeholders then for the JSON form of the string (a
/// valid YAML double-quoted scalar), so every other line keeps
/// serde_yaml's layout.
fn to_yaml(mut value: Value, source: &str) -> Result<String> {
    const MARK: &str = "__goaway_quoted_";
    let mut swapped = Vec::new();
    if !source.contains(MARK) {
        swap_ambiguous(&mut value, &mut |s| {
            let mark = format!("{MARK}{}__", swapped.len());
            swapped.push((mark.clone(), s));
            mark
        });
    }
    let mut text = serde_yaml::to_string(&value).map_err(Error::Render)?;
    // Last first, so that mark 1 is not replaced inside mark 10.
    for (mark, original) in swapped.iter().rev() {
        let quoted = serde_json::to_string(original).map_err(|e| Error::Manifest(e.to_string()))?;
        text = text.replace(mark.as_str(), &quoted);
    }
    Ok(text)
}

/// Replaces every string (value or key) that YAML 1.1 would not read as
/// that string when written plain by serde_yaml.
fn swap_ambiguous(value: &mut Value, swap: &mut dyn FnMut(String) -> String) {
    match value {
        Value::String(s) if needs_quotes_for_yaml_1_1(s) => {
            *s = swap(std::mem::take(s));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| swap_ambiguous(v, swap)),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut v) in entries {
                swap_ambiguous(&mut v, swap);
                let key = if needs_quotes_for_yaml_1_1(&key) {
                    swap(key)
                } else {
                    key
                };
                map.insert(key, v);
            }
        }
        _ => {}
    }
}

/// True for a string that serde_yaml writes plain but YAML 1.1
/// (yaml.org/type: bool, null, int, float, merge, value) resolves to
/// something else. Quoting too much is harmless; too little is not.
fn needs_quotes_for_yaml_1_1(s: &str) -> bool {
    static YAML_1_1: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(concat!(
            r"^(?:",
            r"y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE",
            r"|on|On|ON|off|Off|OFF|~|null|Null|NULL|<<|=",
            r"|[-+]?0b[01_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+",
            r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+",
            r"|[-+]?(?:[0-9][0-9_]*)?\.[0-9.]*(?:[eE][-+][0-9]+)?",
            r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*",
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
            r")$"
        ))
        .expect("valid regex")
    });
    if !YAML_1_1.is_match(s) {
        return false;
    }
    // serde_yaml already quotes what YAML 1.2 would misread.
    serde_yaml::to_string(s).is_ok_and(|t| !t.starts_with(['\'', '"']))
}

/// Splits a YAML stream on `---` lines, keeping every byte.
fn split_documents(input: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut separator = "";
    let mut start = 0;
    let mut pos = 0;
    for line in input.split_inclusive('\n') {
        if is_separator(line) {
            docs.push(Document {
                separator,
                body: &input[start..pos],
            });
            separator = line;
            start = pos + line.len();
        }
        pos += line.len();
    }
    docs.push(Document {
        separator,
        body: &input[start..],
    });
    docs
}

fn is_separator(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r', '#']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_stay_strings_for_yaml_1_1_readers() {
        let value = serde_json::json!({
            "args": ["on", "yes", "N", "off", "1_000", "10:30", "0755", "plain", "8080", "true"],
            "env": [{"name": "FLAG", "value": "y"}],
            "annotations": {"on": "NO", "ok": "yes please"},
            "port": 8080,
            "enabled": true,
        });
        let text = to_yaml(value.clone(), "").unwrap();
        for quoted in [
            r#"- "on""#,
            r#"- "yes""#,
            r#"- "N""#,
            r#"- "off""#,
            r#"- "1_000""#,
            r#"- "10:30""#,
            r#"value: "y""#,
            r#""on": "NO""#,
        ] {
            assert!(text.contains(quoted), "{quoted} not in\n{text}");
        }
        // What serde_yaml already got right is left to it.
        for plain in [
            "- plain\n",
            "- '8080'\n",
            "- '0755'\n",
            "- 'true'\n",
            "ok: yes please\n",
            "port: 8080\n",
            "enabled: true\n",
        ] {
            assert!(text.contains(plain), "{plain:?} not in\n{text}");
        }
        // Same value back.
        let back: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn splitting_keeps_every_byte() {
        let input = "# head\na: 1\n---\nb: 2\n--- # c\n\n---\n";
        let docs = split_documents(input);
        let joined: String = docs
            .iter()
            .map(|d| format!("{}{}", d.separator, d.body))
            .collect();
        assert_eq!(joined, input);
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[1].body, "b: 2\n");
        assert!(!is_separator("----\n"));
    }

    /// `inject -n shop --policy tests/fixtures/inject/policy.yaml`, with
    /// the operator's default settings and a fixed token.
    fn inject_with_fixture_policy(manifests: &str) -> Report {
        inject_in_mode(manifests, crate::Interception::NamedPort)
    }

    /// [`inject_with_fixture_policy`] with `--default-interception mode`.
    fn inject_in_mode(manifests: &str, mode: crate::Interception) -> Report {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject");
        let policy_text = std::fs::read_to_string(root.join("policy.yaml")).unwrap();
        let defaults = PolicyDefaults::default().with_interception(mode);
        let policies = load_policies(&policy_text, "shop", &defaults).unwrap();
        inject_manifests(
            manifests,
            &policies,
            "shop",
            &defaults,
            &AgentConfig::default(),
            &mut || "token".into(),
        )
        .unwrap()
    }

    #[test]
    fn uninject_undoes_inject() {
        for mode in [
            crate::Interception::NamedPort,
            crate::Interception::Redirect,
        ] {
            uninject_undoes_inject_in(mode);
        }
    }

    fn uninject_undoes_inject_in(mode: crate::Interception) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject");
        let manifests = std::fs::read_to_string(root.join("manifests.yaml")).unwrap();
        let injected = inject_in_mode(&manifests, mode);
        assert!(injected.injected.len() >= 2, "{:?}", injected.injected);
        assert_eq!(
            injected.output.contains(inject::INTERCEPT_CONTAINER_NAME),
            mode == crate::Interception::Redirect,
            "{mode:?}"
        );
        let removed = uninject_manifests(&injected.output).unwrap();
        assert_eq!(removed.injected.len(), injected.injected.len());
        // Every document as it was, but for the grace period injection
        // raised (reported) and probes that now name the port's number.
        let docs = |text: &str| -> Vec<Value> {
            split_documents(text)
                .iter()
                .map(|d| {
                    let mut v: Value = serde_yaml::from_str(d.body).unwrap();
                    strip_grace(&mut v);
                    v
                })
                .collect()
        };
        assert_eq!(docs(&removed.output), docs(&manifests));
        // Uninjecting again, or uninjecting what was never injected,
        // changes nothing.
        assert_eq!(
            uninject_manifests(&removed.output).unwrap().output,
            removed.output
        );
        assert_eq!(uninject_manifests(&manifests).unwrap().output, manifests);
    }

    fn strip_grace(v: &mut Value) {
        if let Some(o) = v.as_object_mut() {
            o.remove("terminationGracePeriodSeconds");
            for (_, child) in o.iter_mut() {
                strip_grace(child);
            }
        } else if let Some(a) = v.as_array_mut() {
            a.iter_mut().for_each(strip_grace);
        }
    }

    #[test]
    fn uninject_says_which_probes_and_hooks_stay_on_the_ports_number() {
        let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api, tier: backend}}
    spec:
      containers:
      - name: api
        image: registry.example.com/api:1.0
        ports: [{name: grpc, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /ready, port: grpc}}
        livenessProbe: {tcpSocket: {port: grpc}}
        lifecycle: {postStart: {httpGet: {path: /warm, port: grpc}}}
"#;
        let injected = inject_in_mode(manifest, crate::Interception::NamedPort);
        assert_eq!(injected.injected.len(), 1, "{:?}", injected.warnings);
        let removed = uninject_manifests(&injected.output).unwrap();
        let probes: Vec<&String> = removed
            .warnings
            .iter()
            .filter(|w| w.contains(" stays on port 8080"))
            .collect();
        assert_eq!(probes.len(), 3, "{:?}", removed.warnings);
        assert!(
            probes
                .iter()
                .any(|w| w
                    .contains("container api: readinessProbe stays on port 8080, not \"grpc\"")),
            "{probes:?}"
        );
        assert!(
            probes
                .iter()
                .any(|w| w.contains("container api: lifecycle.postStart stays on port 8080")),
            "{probes:?}"
        );
    }

    #[test]
    fn uninject_removes_only_the_pull_secrets_injection_added() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject");
        let policy_text = std::fs::read_to_string(root.join("policy.yaml")).unwrap();
        let defaults = PolicyDefaults::default();
        let policies = load_policies(&policy_text, "shop", &defaults).unwrap();
        let agent = AgentConfig {
            image_pull_secrets: vec!["regcred".into(), "goaway-registry".into()],
            ..AgentConfig::default()
        };
        let manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop, labels: {tier: backend}}\nspec:\n  imagePullSecrets: [{name: regcred}]\n  containers:\n  - name: api\n    image: x\n    ports: [{name: grpc, containerPort: 8080}]\n";
        let injected =
            inject_manifests(manifest, &policies, "shop", &defaults, &agent, &mut || {
                "token".into()
            })
            .unwrap();
        assert_eq!(injected.injected.len(), 1, "{:?}", injected.warnings);
        assert!(
            !injected
                .warnings
                .iter()
                .any(|w| w.contains("imagePullSecrets")),
            "{:?}",
            injected.warnings
        );
        let pod: Value = serde_yaml::from_str(&injected.output).unwrap();
        assert_eq!(
            pod["spec"]["imagePullSecrets"],
            serde_json::json!([{"name": "regcred"}, {"name": "goaway-registry"}])
        );
        assert_eq!(
            pod["metadata"]["annotations"][inject::ANNOTATION_INJECTED_PULL_SECRETS],
            "goaway-registry"
        );

        let removed = uninject_manifests(&injected.output).unwrap();
        let mut back: Value = serde_yaml::from_str(&removed.output).unwrap();
        strip_grace(&mut back);
        let original: Value = serde_yaml::from_str(manifest).unwrap();
        assert_eq!(back, original);

        // Secrets injection added to a pod that had none leave no empty list.
        let bare = manifest.replace("  imagePullSecrets: [{name: regcred}]\n", "");
        let injected = inject_manifests(&bare, &policies, "shop", &defaults, &agent, &mut || {
            "token".into()
        })
        .unwrap();
        let removed = uninject_manifests(&injected.output).unwrap();
        let mut back: Value = serde_yaml::from_str(&removed.output).unwrap();
        strip_grace(&mut back);
        assert_eq!(back, serde_yaml::from_str::<Value>(&bare).unwrap());
        // That template's pods would lose their ServiceAccount's pull
        // secrets, and the user is told.
        assert!(
            injected
                .warnings
                .iter()
                .any(|w| w
                    .starts_with("Pod/p: imagePullSecrets now lists regcred, goaway-registry;")),
            "{:?}",
            injected.warnings
        );
    }

    #[test]
    fn uninject_puts_back_the_sleeping_pre_stop_hooks_injection_replaced() {
        let manifest = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {tier: backend}}
  template:
    metadata: {labels: {tier: backend}}
    spec:
      containers:
      - name: api
        image: x
        ports: [{name: grpc, containerPort: 8080}]
        lifecycle:
          postStart: {exec: {command: [touch, /tmp/started]}}
          preStop: {exec: {command: [/bin/sh, -c, sleep 15]}}
      - name: native
        image: y
        lifecycle:
          preStop: {sleep: {seconds: 4}}
      - name: own
        image: z
        lifecycle:
          preStop: {exec: {command: [sh, -c, 'sleep 5 && kill 1']}}
"#;
        let injected = inject_with_fixture_policy(manifest);
        assert_eq!(injected.injected.len(), 1, "{:?}", injected.warnings);
        let out: Value = serde_yaml::from_str(&injected.output).unwrap();
        let hook = |i: usize| {
            out["spec"]["template"]["spec"]["containers"][i]["lifecycle"]["preStop"].clone()
        };
        assert_eq!(hook(0)["httpGet"]["path"], "/drain?min=15s");
        assert_eq!(hook(1)["httpGet"]["path"], "/drain?min=4s");
        assert_eq!(
            hook(2),
            serde_json::json!({"exec": {"command": ["sh", "-c", "sleep 5 && kill 1"]}})
        );
        assert_eq!(injected.notes.len(), 1, "{:?}", injected.notes);
        assert!(
            injected.notes[0].starts_with(
                "Deployment/api: the preStop hook of container(s) api (sleep 15s), native (sleep 4s) only slept"
            ),
            "{:?}",
            injected.notes
        );
        // The hook that does more is kept, and said so.
        assert!(
            injected
                .warnings
                .iter()
                .any(|w| w.contains("container(s) own keep their own preStop hook")),
            "{:?}",
            injected.warnings
        );

        let removed = uninject_manifests(&injected.output).unwrap();
        let mut back: Value = serde_yaml::from_str(&removed.output).unwrap();
        strip_grace(&mut back);
        assert_eq!(back, serde_yaml::from_str::<Value>(manifest).unwrap());
    }

    #[test]
    fn objects_of_another_namespace_are_left_with_a_warning() {
        let manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: other, labels: {app: api}}\nspec:\n  containers:\n  - name: api\n    image: x\n    ports: [{name: grpc, containerPort: 8080}]\n";
        let report = inject_with_fixture_policy(manifest);
        assert_eq!(report.output, manifest);
        assert!(report.injected.is_empty());
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("Pod/p") && w.contains("\"other\"")),
            "{:?}",
            report.warnings
        );
    }
}
