//! The rendered manifests as typed Kubernetes objects, and the operator's
//! command line as the Deployment gives it.

use std::collections::{BTreeMap, BTreeSet};

use clap::{CommandFactory, Parser};
use goaway_operator::cli::{Cli, Command as OperatorCommand, LogFormat, RunArgs};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PodSpec, Secret, Service, ServiceAccount, ServicePort,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{Selector, SelectorExt};
use serde::Serialize;
use serde::de::{Deserialize, DeserializeOwned};
use serde_json::Value;

use crate::POD_NAME;

/// One `helm template`: every object, typed, and NOTES.txt. Unknown kinds
/// fail the parse.
#[derive(Default)]
pub(crate) struct Rendered {
    pub release: String,
    pub namespace: String,
    pub notes: String,
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub service_accounts: Vec<ServiceAccount>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub webhook_configs: Vec<MutatingWebhookConfiguration>,
    pub admission_policies: Vec<ValidatingAdmissionPolicy>,
    pub admission_policy_bindings: Vec<ValidatingAdmissionPolicyBinding>,
    pub pdbs: Vec<PodDisruptionBudget>,
    pub config_maps: Vec<ConfigMap>,
    pub secrets: Vec<Secret>,
    /// cert-manager objects have no k8s-openapi type.
    pub issuers: Vec<Value>,
    pub certificates: Vec<Value>,
}

/// Where an environment variable's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Env {
    Value(String),
    Field(String),
}

impl Rendered {
    pub(crate) fn parse(release: &str, namespace: &str, manifests: &Value) -> Rendered {
        let mut r = Rendered {
            release: release.into(),
            namespace: namespace.into(),
            ..Default::default()
        };
        let manifests = manifests.as_object().expect("manifests is a map");
        for (template, text) in manifests {
            let text = text.as_str().expect("a manifest is text");
            if template.ends_with("/NOTES.txt") {
                r.notes = text.to_string();
                continue;
            }
            for doc in serde_yaml::Deserializer::from_str(text) {
                let value = Value::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{template} is not YAML: {e}\n{text}"));
                if value.is_null() {
                    continue;
                }
                r.add(template, strip_nulls(value));
            }
        }
        r
    }

    fn add(&mut self, template: &str, value: Value) {
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let namespaced = !matches!(
            kind.as_str(),
            "ClusterRole"
                | "ClusterRoleBinding"
                | "MutatingWebhookConfiguration"
                | "ValidatingAdmissionPolicy"
                | "ValidatingAdmissionPolicyBinding"
        );
        // `helm template | kubectl apply` must land in the right place too.
        if namespaced {
            assert!(
                value["metadata"]["namespace"].is_string(),
                "{template}: {kind} {} has no metadata.namespace",
                value["metadata"]["name"]
            );
        }
        match (api_version.as_str(), kind.as_str()) {
            ("apps/v1", "Deployment") => self.deployments.push(typed(template, &value)),
            ("v1", "Service") => self.services.push(typed(template, &value)),
            ("v1", "ServiceAccount") => self.service_accounts.push(typed(template, &value)),
            ("v1", "ConfigMap") => self.config_maps.push(typed(template, &value)),
            ("v1", "Secret") => self.secrets.push(typed(template, &value)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                self.cluster_roles.push(typed(template, &value))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                self.cluster_role_bindings.push(typed(template, &value))
            }
            ("rbac.authorization.k8s.io/v1", "Role") => self.roles.push(typed(template, &value)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                self.role_bindings.push(typed(template, &value))
            }
            ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                self.webhook_configs.push(typed(template, &value))
            }
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
                self.admission_policies.push(typed(template, &value))
            }
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
                self.admission_policy_bindings.push(typed(template, &value))
            }
            ("policy/v1", "PodDisruptionBudget") => self.pdbs.push(typed(template, &value)),
            ("cert-manager.io/v1", "Issuer") => self.issuers.push(value),
            ("cert-manager.io/v1", "Certificate") => self.certificates.push(value),
            other => panic!("{template}: unexpected object {other:?}"),
        }
    }

    /// Every rendered object as (kind, namespace, name).
    pub(crate) fn inventory(&self) -> BTreeSet<(String, String, String)> {
        fn meta<T: k8s_openapi::Metadata<Ty = ObjectMeta> + k8s_openapi::Resource>(
            items: &[T],
        ) -> Vec<(String, String, String)> {
            items
                .iter()
                .map(|o| {
                    let m = o.metadata();
                    (
                        T::KIND.to_string(),
                        m.namespace.clone().unwrap_or_default(),
                        m.name.clone().unwrap_or_default(),
                    )
                })
                .collect()
        }
        let generic = |kind: &str, items: &[Value]| -> Vec<(String, String, String)> {
            items
                .iter()
                .map(|v| {
                    (
                        kind.to_string(),
                        v["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or_default()
                            .into(),
                        v["metadata"]["name"].as_str().unwrap_or_default().into(),
                    )
                })
                .collect()
        };
        let mut all = Vec::new();
        all.extend(meta(&self.deployments));
        all.extend(meta(&self.services));
        all.extend(meta(&self.service_accounts));
        all.extend(meta(&self.config_maps));
        all.extend(meta(&self.secrets));
        all.extend(meta(&self.cluster_roles));
        all.extend(meta(&self.cluster_role_bindings));
        all.extend(meta(&self.roles));
        all.extend(meta(&self.role_bindings));
        all.extend(meta(&self.webhook_configs));
        all.extend(meta(&self.admission_policies));
        all.extend(meta(&self.admission_policy_bindings));
        all.extend(meta(&self.pdbs));
        all.extend(generic("Issuer", &self.issuers));
        all.extend(generic("Certificate", &self.certificates));
        all.into_iter().collect()
    }

    pub(crate) fn deployment(&self) -> &Deployment {
        assert_eq!(self.deployments.len(), 1, "one operator Deployment");
        &self.deployments[0]
    }

    pub(crate) fn pod(&self) -> &PodSpec {
        let spec = self.deployment().spec.as_ref().expect("Deployment.spec");
        spec.template.spec.as_ref().expect("pod template spec")
    }

    pub(crate) fn pod_labels(&self) -> BTreeMap<String, String> {
        let spec = self.deployment().spec.as_ref().expect("Deployment.spec");
        let meta = spec
            .template
            .metadata
            .as_ref()
            .expect("pod template metadata");
        meta.labels.clone().unwrap_or_default()
    }

    pub(crate) fn container(&self) -> &Container {
        let pod = self.pod();
        assert_eq!(pod.containers.len(), 1, "one operator container");
        &pod.containers[0]
    }

    pub(crate) fn env(&self) -> BTreeMap<String, Env> {
        let mut env = BTreeMap::new();
        for var in self.container().env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(v), None) => Env::Value(v.clone()),
                (None, Some(from)) => Env::Field(
                    from.field_ref
                        .as_ref()
                        .unwrap_or_else(|| panic!("{} must come from a fieldRef", var.name))
                        .field_path
                        .clone(),
                ),
                // An empty value renders as `value: ""`, never as nothing.
                (None, None) => panic!("{} has no value", var.name),
                (Some(_), Some(_)) => panic!("{} has two values", var.name),
            };
            assert!(
                env.insert(var.name.clone(), value).is_none(),
                "{} is set twice",
                var.name
            );
        }
        env
    }

    pub(crate) fn env_value(&self, name: &str) -> Option<String> {
        match self.env().get(name) {
            Some(Env::Value(v)) => Some(v.clone()),
            Some(Env::Field(f)) => panic!("{name} comes from {f}"),
            None => None,
        }
    }

    /// The operator's command line as the binary would parse it: each
    /// GOAWAY_* variable becomes the flag that reads it (so an unknown
    /// variable fails), the downward API filled in as the kubelet would.
    pub(crate) fn operator_args(&self) -> (RunArgs, LogFormat) {
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").expect("a run subcommand");
        let flag_of: BTreeMap<String, String> = cmd
            .get_arguments()
            .chain(run.get_arguments())
            .filter_map(|a| {
                Some((
                    a.get_env()?.to_str()?.to_string(),
                    a.get_long()?.to_string(),
                ))
            })
            .collect();
        let container = self.container();
        assert_eq!(container.command, None, "the image's ENTRYPOINT runs");
        let mut argv = vec!["goaway-operator".to_string()];
        argv.extend(container.args.clone().unwrap_or_default());
        for (name, value) in self.env() {
            let flag = flag_of.get(&name).unwrap_or_else(|| {
                panic!("{name} is not the variable of any `goaway-operator run` flag")
            });
            let value = match value {
                Env::Value(v) => v,
                Env::Field(path) => match path.as_str() {
                    "metadata.namespace" => self.namespace.clone(),
                    "metadata.name" => POD_NAME.to_string(),
                    other => panic!("{name} comes from an unexpected field {other}"),
                },
            };
            argv.push(format!("--{flag}={value}"));
        }
        let cli = Cli::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("the operator rejects {argv:?}:\n{e}"));
        match cli.command {
            OperatorCommand::Run(args) => (*args, cli.log_format),
            other => panic!("the chart runs {other:?}, not `run`"),
        }
    }

    pub(crate) fn service(&self) -> &Service {
        assert_eq!(self.services.len(), 1, "one Service");
        &self.services[0]
    }

    pub(crate) fn service_port(&self, name: &str) -> &ServicePort {
        let spec = self.service().spec.as_ref().expect("Service.spec");
        spec.ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("the Service has no port {name}"))
    }

    pub(crate) fn webhook_config(&self) -> &MutatingWebhookConfiguration {
        assert_eq!(
            self.webhook_configs.len(),
            1,
            "one MutatingWebhookConfiguration"
        );
        &self.webhook_configs[0]
    }

    pub(crate) fn webhook(&self) -> &MutatingWebhook {
        let hooks = self
            .webhook_config()
            .webhooks
            .as_deref()
            .unwrap_or_default();
        assert_eq!(hooks.len(), 1, "one webhook");
        &hooks[0]
    }

    /// The container port a probe or Service names, as a number.
    pub(crate) fn container_port(&self, port: &IntOrString) -> u16 {
        let n = match port {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => {
                self.container()
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name))
                    .unwrap_or_else(|| panic!("no container port named {name}"))
                    .container_port
            }
        };
        u16::try_from(n).expect("a port number")
    }
}

/// Deserializes into the k8s-openapi type and checks nothing was lost on
/// the way (k8s-openapi skips unknown fields; the API server would not).
fn typed<T: DeserializeOwned + Serialize>(template: &str, value: &Value) -> T {
    let what = format!(
        "{template}: {} {}",
        value["kind"].as_str().unwrap_or("?"),
        value["metadata"]["name"].as_str().unwrap_or("?")
    );
    let object: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{what} does not deserialize: {e}"));
    let back = serde_json::to_value(&object).expect("serializes");
    if let Some(difference) = first_difference(value, &back, String::new()) {
        panic!("{what}: {difference} (an unknown, misspelt or mistyped field?)");
    }
    object
}

fn first_difference(rendered: &Value, typed: &Value, path: String) -> Option<String> {
    match (rendered, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let here = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, here) {
                            return Some(d);
                        }
                    }
                    None => return Some(format!("{here} is not a field of the type")),
                }
            }
            b.keys()
                .find(|k| !a.contains_key(*k))
                .map(|k| format!("{path}.{k} appeared from nowhere"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{path}[{i}]"))),
        _ if rendered == typed => None,
        _ => Some(format!("{path}: rendered {rendered}, typed {typed}")),
    }
}

/// The API server drops nulls (`annotations:` with nothing under it).
fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

pub(crate) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Label selector semantics as kube (and the API server) apply them.
pub(crate) fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    Selector::try_from(selector.clone())
        .expect("a valid selector")
        .matches(labels)
}

pub(crate) fn namespace_labels(name: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut l = labels(extra);
    l.insert("kubernetes.io/metadata.name".into(), name.into());
    l
}
