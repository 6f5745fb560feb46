//! What `kubectl explain` says about the `drain` fields beyond the policy
//! type's own documentation: the operator fills an unset field with its
//! default ([`crate::defaults`]), which the policy type in
//! `goaway-transport` knows nothing about.

use serde_json::Value;

/// `(field, flag, Helm value)` for every field the operator can default.
const DEFAULTED: [(&str, &str, &str); 3] = [
    ("delay", "--default-drain-delay", "agent.drain.delay"),
    ("timeout", "--default-drain-timeout", "agent.drain.timeout"),
    (
        "goawayAckTimeout",
        "--default-drain-goaway-ack-timeout",
        "agent.drain.goawayAckTimeout",
    ),
];

/// Appends the operator-default note to `drain` and each of its fields
/// (a schemars container transform on the spec).
pub(super) fn add_operator_defaults(schema: &mut schemars::Schema) {
    let Some(drain) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("drain"))
    else {
        return;
    };
    append(
        drain,
        "A field left unset takes the operator's default: the one named below unless the operator sets its own (goaway-operator --default-drain-*, Helm values agent.drain.*).",
    );
    let Some(fields) = drain.get_mut("properties") else {
        return;
    };
    for (field, flag, value) in DEFAULTED {
        if let Some(schema) = fields.get_mut(field) {
            append(
                schema,
                &format!(
                    "Unset: the operator's default ({flag}, Helm value {value}) when it has one."
                ),
            );
        }
    }
}

fn append(schema: &mut Value, note: &str) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let text = match object.get("description").and_then(Value::as_str) {
        Some(d) => format!("{d}\n{note}"),
        None => note.to_string(),
    };
    object.insert("description".into(), Value::String(text));
}
