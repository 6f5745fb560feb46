//! Keeping the webhook certificate current.
//!
//! Generate mode: every replica reads the Secret and serves its
//! certificate; the first replica to find it missing creates it (a create
//! conflict means another replica won, and its Secret is used). Only the
//! leader renews the serving certificate — [`RENEW_BEFORE_DAYS`] before it
//! expires or when the Service's DNS names changed — and writes the CA
//! into the MutatingWebhookConfiguration's `caBundle`. The Secret is owned
//! by the operator's Deployment once its uid is known ([`Owner`]): the
//! creator sets the reference, and the leader adds it to a Secret that
//! lacks it, so deleting the Deployment deletes the CA's key with it.
//! Files mode: reload
//! `tls.crt`/`tls.key` when their bytes change. Either way the CA is
//! published on the store ([`CertStore::set_ca`]) for the agents.

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{Timestamp, ToSpan};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::ca::{self, Pem};
use super::{CertStore, Source};
use crate::owner::Owner;
use crate::{Error, MANAGER, Result};

/// Renew the serving certificate this long before it expires.
pub const RENEW_BEFORE_DAYS: i64 = 30;
const NOT_AFTER: &str = "goaway.dev/not-after";
const DNS_NAMES: &str = "goaway.dev/dns-names";
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";

/// Where the certificate comes from: plain data, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The operator's namespace: the Secret's, and the Service's.
    pub namespace: String,
    /// Generate (into a Secret) or read from files.
    pub source: Source,
}

/// The runtime handles [`maintain`] works with.
pub struct Context {
    /// The API client (generate mode).
    pub client: Client,
    /// Where the certificate is loaded, for the webhook to serve.
    pub store: Arc<CertStore>,
    /// Whether this replica leads ([`crate::leader`]): only the leader
    /// renews and patches the `caBundle`. A change triggers a sync.
    pub leader: watch::Receiver<bool>,
    /// The Secret's owner, once known.
    pub owner: Owner,
    /// Notified when the webhook self-check fails
    /// ([`crate::webhook::self_check`]): sync at once, so that a leader
    /// puts back a caBundle that went missing or stale without waiting
    /// for the next period.
    pub resync: Arc<Notify>,
}

/// Keeps `ctx.store` loaded from `config.source` until `shutdown` is
/// signalled; see the module doc.
pub async fn maintain(ctx: Context, config: Config, shutdown: drain_rs::Watch) {
    let Context {
        client,
        store,
        mut leader,
        owner,
        resync,
    } = ctx;
    let Config { namespace, source } = config;
    let mut signalled = pin!(shutdown.signaled());
    let mut last_files = None;
    loop {
        let period = match &source {
            Source::Generate {
                secret,
                service,
                hosts,
                webhook_config,
            } => {
                let is_leader = *leader.borrow_and_update();
                let names = ca::serving_names(service, &namespace, hosts);
                let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
                match sync_secret(&secrets, secret, &names, is_leader, &store, &owner).await {
                    Ok(ca) if is_leader => {
                        if let Err(error) = patch_ca_bundle(&client, webhook_config, &ca).await {
                            warn!(%error, webhook_config, "patching caBundle failed");
                        }
                    }
                    Ok(_) => {}
                    Err(error) => warn!(%error, secret, "webhook certificate sync failed"),
                }
                Duration::from_secs(60)
            }
            Source::Files(dir) => {
                if let Err(error) = reload_files(dir, &store, &mut last_files) {
                    warn!(%error, dir = %dir.display(), "loading webhook certificate failed");
                }
                Duration::from_secs(10)
            }
        };
        let period = if store.is_loaded() {
            period
        } else {
            Duration::from_secs(2)
        };
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = leader.changed() => {}
            () = resync.notified() => {}
            _ = &mut signalled => return,
        }
    }
}

fn reload_files(
    dir: &Path,
    store: &CertStore,
    last: &mut Option<(Vec<u8>, Vec<u8>)>,
) -> Result<()> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|error| Error::Io {
            path: path.display().to_string(),
            error,
        })
    };
    let files = (read(TLS_CERT)?, read(TLS_KEY)?);
    if last.as_ref() != Some(&files) {
        store.load_pem(&files.0, &files.1)?;
        info!(dir = %dir.display(), "loaded webhook certificate");
        *last = Some(files);
    }
    // Optional: only CA and self-signed issuers write it; without it the
    // agents cannot check the control channel's certificate.
    if let Ok(ca) = std::fs::read_to_string(dir.join(CA_CERT))
        && !ca.trim().is_empty()
    {
        store.set_ca(&ca);
    }
    Ok(())
}

/// Makes sure the Secret holds a usable certificate, loads it, and
/// returns the CA certificate PEM. A Secret this creates carries `owner`'s
/// reference when it is known; the leader adds it to one that lacks it.
pub async fn sync_secret(
    secrets: &Api<Secret>,
    name: &str,
    dns_names: &[String],
    is_leader: bool,
    store: &CertStore,
    owner: &Owner,
) -> Result<String> {
    let (ca, serving) = match secrets.get_opt(name).await? {
        Some(secret) => {
            let stored = Stored::read(&secret)?;
            if is_leader && stored.needs_renewal(dns_names) {
                let (serving, until) = ca::new_serving(&stored.ca, dns_names)?;
                let mut renewed = build(name, &stored.ca, &serving, until, dns_names);
                renewed.metadata.resource_version = secret.metadata.resource_version.clone();
                renewed.metadata.owner_references = secret.metadata.owner_references.clone();
                owner.add_to(&mut renewed.metadata);
                secrets
                    .replace(name, &PostParams::default(), &renewed)
                    .await?;
                info!(secret = name, not_after = %until, "renewed webhook serving certificate");
                (stored.ca, serving)
            } else {
                let mut owned = secret.clone();
                if is_leader && owner.add_to(&mut owned.metadata) {
                    secrets
                        .replace(name, &PostParams::default(), &owned)
                        .await?;
                    info!(
                        secret = name,
                        "the operator's Deployment now owns the webhook certificate"
                    );
                }
                (stored.ca, stored.serving)
            }
        }
        None => {
            let ca = ca::new_ca()?;
            let (serving, until) = ca::new_serving(&ca, dns_names)?;
            let mut secret = build(name, &ca, &serving, until, dns_names);
            owner.add_to(&mut secret.metadata);
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    info!(secret = name, "created webhook CA and serving certificate");
                    (ca, serving)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    debug!(
                        secret = name,
                        "another replica created the certificate first"
                    );
                    let stored = Stored::read(&secrets.get(name).await?)?;
                    (stored.ca, stored.serving)
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    store.load_pem(serving.cert.as_bytes(), serving.key.as_bytes())?;
    store.set_ca(&ca.cert);
    Ok(ca.cert)
}

struct Stored {
    ca: Pem,
    serving: Pem,
    not_after: Option<Timestamp>,
    dns_names: String,
}

impl Stored {
    fn read(secret: &Secret) -> Result<Stored> {
        let data = secret.data.clone().unwrap_or_default();
        let field = |key: &str| {
            data.get(key)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .ok_or_else(|| Error::Certificate(format!("Secret has no usable {key}")))
        };
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        Ok(Stored {
            ca: Pem {
                cert: field(CA_CERT)?,
                key: field(CA_KEY)?,
            },
            serving: Pem {
                cert: field(TLS_CERT)?,
                key: field(TLS_KEY)?,
            },
            not_after: annotations.get(NOT_AFTER).and_then(|t| t.parse().ok()),
            dns_names: annotations.get(DNS_NAMES).cloned().unwrap_or_default(),
        })
    }

    fn needs_renewal(&self, dns_names: &[String]) -> bool {
        let horizon = Timestamp::now()
            .checked_add((RENEW_BEFORE_DAYS * 24).hours())
            .ok();
        let expiring = match (self.not_after, horizon) {
            (Some(not_after), Some(horizon)) => not_after < horizon,
            _ => true,
        };
        expiring || self.dns_names != dns_names.join(",")
    }
}

fn build(
    name: &str,
    ca: &Pem,
    serving: &Pem,
    not_after: Timestamp,
    dns_names: &[String],
) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let data: BTreeMap<String, ByteString> = [
        (TLS_CERT.to_string(), bytes(&serving.cert)),
        (TLS_KEY.to_string(), bytes(&serving.key)),
        (CA_CERT.to_string(), bytes(&ca.cert)),
        (CA_KEY.to_string(), bytes(&ca.key)),
    ]
    .into();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                [(
                    crate::controller::LABEL_MANAGED_BY.to_string(),
                    MANAGER.to_string(),
                )]
                .into(),
            ),
            annotations: Some(
                [
                    (NOT_AFTER.to_string(), not_after.to_string()),
                    (DNS_NAMES.to_string(), dns_names.join(",")),
                ]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Writes `ca_pem` into every webhook of the configuration whose
/// `caBundle` differs. A JSON patch with a `test` on each webhook's name,
/// so a concurrent reorder fails instead of patching the wrong entry.
pub async fn patch_ca_bundle(client: &Client, config: &str, ca_pem: &str) -> Result<()> {
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let Some(current) = api.get_opt(config).await? else {
        debug!(
            config,
            "MutatingWebhookConfiguration not found; nothing to patch"
        );
        return Ok(());
    };
    let want = ByteString(ca_pem.as_bytes().to_vec());
    let encoded = serde_json::to_value(&want).map_err(|e| Error::Certificate(e.to_string()))?;
    let mut ops = Vec::new();
    for (i, webhook) in current.webhooks.iter().flatten().enumerate() {
        if webhook.client_config.ca_bundle.as_ref() != Some(&want) {
            ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.name}));
            ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
        .map_err(|e| Error::Certificate(e.to_string()))?;
    api.patch(config, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await?;
    info!(config, "patched webhook caBundle");
    Ok(())
}
