//! The goaway Kubernetes operator (docs/design.md §8, §9, §10).
//!
//! It owns the `KeepalivePolicy` custom resource ([`crd`]), the controller
//! that renders each policy into the ConfigMap the agent reads and reports
//! status ([`controller`]), and the mutating admission webhook that injects
//! the agent as a native sidecar ([`webhook`], built on the pure pod
//! mutation in [`inject`], which the `inject` command ([`manifests`])
//! shares byte for byte).
//!
//! It does not own the policy semantics: the CRD embeds
//! [`goaway_transport::Policy`] and validation is
//! [`goaway_transport::Policy::validate`] with
//! [`Strictness::Production`](goaway_transport::policy::Strictness), the
//! same function the agent runs on its file. It knows nothing about HTTP/2.
//!
//! Operator-wide defaults for the drain settings a policy leaves out
//! ([`defaults`]) are merged into each policy by the controller, the
//! webhook and `inject` alike.
//!
//! Every replica also serves the control channel ([`channel`]): each
//! injected agent streams its pod's policy and where the pod stands in
//! its EndpointSlices, authenticated by the pod's projected token.
//!
//! Runtime plumbing: [`cli`] (flags and environment), [`leader`] (Lease-based leader
//! election), [`tls`] (the webhook's certificate authority and serving
//! certificate), [`admin`] (health and metrics endpoints), [`metrics`],
//! [`lifecycle`] (stopping on SIGTERM: one drain signal every task
//! watches, waited for), [`owner`] (the operator's Deployment owns the
//! Secret and Lease it creates, so an uninstall removes them) and
//! [`rbac`] (the API permissions the code uses, for the Helm chart to
//! check against).

#![warn(missing_docs)]

pub mod admin;
pub mod channel;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod defaults;
mod error;
pub mod inject;
pub mod leader;
pub mod lifecycle;
pub mod manifests;
pub mod metrics;
pub mod owner;
mod quantity;
pub mod rbac;
pub mod run;
pub mod selection;
pub mod tls;
pub mod webhook;

pub use crd::{Interception, KeepalivePolicy, KeepalivePolicySpec, KeepalivePolicyStatus};
pub use defaults::PolicyDefaults;
pub use error::{Error, FlagError, Result};

/// The field manager and event reporter name used for every write.
pub const MANAGER: &str = "goaway-operator";
