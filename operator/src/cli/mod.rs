//! Command-line tools beside the operator: `goaway-operator inject`
//! ([`inject`]), which applies the webhook's mutation to manifests.

pub mod inject;
