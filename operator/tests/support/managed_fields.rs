//! Server-side apply's field ownership, reduced to what the fake API
//! server ([`super::fake_api`]) needs so that clients which rely on it
//! behave as they would against a real one — kube-lease-manager's mutual
//! exclusion is an apply that must fail while another replica holds the
//! Lease.
//!
//! The model follows structured-merge-diff, which the API server uses:
//! - each leaf of an object (a scalar or a list; maps are walked into) is
//!   owned by the field managers that set its current value;
//! - an **apply** that would change a leaf another manager owns is
//!   refused with a conflict unless forced (a forced one takes the leaf
//!   from them); otherwise its manager owns every leaf it names, sharing
//!   those whose value it left as it was;
//! - any other write (create, replace, merge, strategic or JSON patch) is
//!   an **update**: its manager becomes the only owner of each leaf it
//!   changed;
//! - a leaf that is gone has no owners.
//!
//! Limits, on purpose: lists are atomic (no merging by key for
//! `listType=map`/`set`); a manager is only its name (the real server
//! also separates a manager's Apply from its Updates and subresources, so
//! there a manager's own update can conflict with its apply); an apply
//! never removes leaves its manager applied before and now leaves out;
//! ownership is kept beside the object, not shown as
//! `metadata.managedFields`; the server's own metadata is nobody's.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// A leaf's path from the object's root (`["spec", "holderIdentity"]`).
type Field = Vec<String>;

/// Metadata the server sets, which no manager owns.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "managedFields",
    "selfLink",
];

/// Who owns which leaf of one object.
#[derive(Clone, Debug, Default)]
pub(crate) struct ManagedFields(BTreeMap<Field, BTreeSet<String>>);

/// A leaf an apply would change, and a manager that owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Conflict {
    /// The leaf, as the API server spells it: `.spec.holderIdentity`.
    pub field: String,
    /// Its owner.
    pub manager: String,
}

impl ManagedFields {
    /// An apply of `applied` by `manager` that takes the object from
    /// `live` (`None`: it is being created) to `next`. Refused, changing
    /// nothing, if it would change a leaf another manager owns and is not
    /// `force`d.
    pub(crate) fn apply(
        &mut self,
        manager: &str,
        force: bool,
        live: Option<&Value>,
        applied: &Value,
        next: &Value,
    ) -> Result<(), Vec<Conflict>> {
        let changed = changed(live, next);
        let conflicts: Vec<Conflict> = changed
            .iter()
            .flat_map(|field| {
                self.0
                    .get(field)
                    .into_iter()
                    .flatten()
                    .filter(|owner| *owner != manager)
                    .map(|owner| Conflict {
                        field: display(field),
                        manager: owner.clone(),
                    })
            })
            .collect();
        if !conflicts.is_empty() && !force {
            return Err(conflicts);
        }
        for field in changed {
            self.0.remove(&field);
        }
        for field in leaves(applied).into_keys() {
            self.0.entry(field).or_default().insert(manager.to_string());
        }
        self.forget_missing(next);
        Ok(())
    }

    /// A write by `manager` that is not an apply, taking the object from
    /// `live` (`None`: it is being created) to `next`. Never refused.
    pub(crate) fn update(&mut self, manager: &str, live: Option<&Value>, next: &Value) {
        for field in changed(live, next) {
            self.0.insert(field, BTreeSet::from([manager.to_string()]));
        }
        self.forget_missing(next);
    }

    /// The managers owning `field` (spelled `.spec.holderIdentity`).
    pub(crate) fn owners(&self, field: &str) -> Vec<String> {
        self.0
            .iter()
            .find(|(f, _)| display(f) == field)
            .map(|(_, owners)| owners.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn forget_missing(&mut self, object: &Value) {
        let present = leaves(object);
        self.0
            .retain(|field, owners| !owners.is_empty() && present.contains_key(field));
    }
}

/// The leaves whose value differs between `live` and `next`, including
/// those only one of them has.
fn changed(live: Option<&Value>, next: &Value) -> BTreeSet<Field> {
    let before = live.map(leaves).unwrap_or_default();
    let after = leaves(next);
    let mut changed: BTreeSet<Field> = after
        .iter()
        .filter(|(field, value)| before.get(*field) != Some(value))
        .map(|(field, _)| field.clone())
        .collect();
    changed.extend(
        before
            .into_keys()
            .filter(|field| !after.contains_key(field)),
    );
    changed
}

/// Every leaf a manager can own, with its value. Nulls are absences.
fn leaves(object: &Value) -> BTreeMap<Field, &Value> {
    fn walk<'a>(value: &'a Value, field: &mut Field, out: &mut BTreeMap<Field, &'a Value>) {
        match value {
            Value::Null => {}
            Value::Object(map) => {
                for (key, value) in map {
                    let top = field.is_empty();
                    let server_set = (top && (key == "apiVersion" || key == "kind"))
                        || (field.len() == 1
                            && field[0] == "metadata"
                            && SERVER_METADATA.contains(&key.as_str()));
                    if server_set {
                        continue;
                    }
                    field.push(key.clone());
                    walk(value, field, out);
                    field.pop();
                }
            }
            leaf => {
                out.insert(field.clone(), leaf);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(object, &mut Vec::new(), &mut out);
    out
}

fn display(field: &Field) -> String {
    field.iter().map(|key| format!(".{key}")).collect()
}
