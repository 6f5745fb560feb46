//! TLS for the webhook: where the serving certificate comes from and the
//! rustls resolver that serves whichever is current.
//!
//! Two sources, chosen by the chart:
//! - [`Source::Generate`]: the operator runs its own CA ([`ca`]), keeps CA
//!   and serving certificate in a Secret shared by the replicas
//!   ([`secret`]), and the leader writes the CA into the
//!   MutatingWebhookConfiguration's `caBundle`;
//! - [`Source::Files`]: cert-manager (or anything else) writes `tls.crt`
//!   and `tls.key` into a mounted directory and injects the `caBundle`;
//!   the operator only reloads the files.
//!
//! Either way the certificate is swapped in place, without a restart.
//! The same certificate serves the agents' control channel
//! ([`crate::channel`]); the CA that signed it is published
//! ([`CertStore::ca`]) for the controller to hand to the agents.

pub mod ca;
pub mod secret;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::{Error, Result};

/// Where the serving certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The operator's own CA, kept in the Secret `secret` of the operator's
    /// namespace; the leader patches `webhook_config`'s caBundle.
    Generate {
        /// The Secret's name.
        secret: String,
        /// The webhook Service's name (for the certificate's DNS names).
        service: String,
        /// More DNS names or IP addresses for the certificate: the host
        /// of a URL the API server calls the webhook by.
        hosts: Vec<String>,
        /// The MutatingWebhookConfiguration's name.
        webhook_config: String,
    },
    /// `tls.crt` and `tls.key` in this directory, reloaded when they change.
    Files(PathBuf),
}

/// The current serving certificate; a rustls certificate resolver.
#[derive(Debug)]
pub struct CertStore {
    provider: Arc<CryptoProvider>,
    current: RwLock<Option<Arc<CertifiedKey>>>,
    ca: watch::Sender<Option<Arc<str>>>,
}

impl CertStore {
    /// An empty store: handshakes fail until [`CertStore::load_pem`].
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        CertStore {
            provider,
            current: RwLock::new(None),
            ca: watch::Sender::new(None),
        }
    }

    /// Replaces the certificate (chain first) and key. On error the
    /// previous certificate stays.
    pub fn load_pem(&self, cert: &[u8], key: &[u8]) -> Result<()> {
        let bad =
            |what: &str, e: &dyn std::fmt::Display| Error::Certificate(format!("{what}: {e}"));
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate PEM", &e))?;
        if chain.is_empty() {
            return Err(Error::Certificate(
                "certificate PEM holds no certificate".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("key PEM", &e))?;
        let key = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| bad("private key", &e))?;
        let certified = Arc::new(CertifiedKey::new(chain, key));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(certified);
        Ok(())
    }

    /// Publishes the CA certificate (PEM) that signed the serving
    /// certificate, when it changed.
    pub fn set_ca(&self, pem: &str) {
        self.ca.send_if_modified(|ca| {
            let changed = ca.as_deref() != Some(pem);
            if changed {
                *ca = Some(Arc::from(pem));
            }
            changed
        });
    }

    /// The CA certificate (PEM) that signed the serving certificate, as
    /// it becomes known: at once in generate mode; in files mode when the
    /// directory has a `ca.crt` (cert-manager writes one for CA and
    /// self-signed issuers), else never.
    pub fn ca(&self) -> CaWatch {
        CaWatch(self.ca.subscribe())
    }

    /// True once a certificate is loaded.
    pub fn is_loaded(&self) -> bool {
        self.current.read().map(|c| c.is_some()).unwrap_or(false)
    }

    /// The crypto provider (ring, as kube's client uses).
    pub fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok()?.clone()
    }
}

/// The operator's CA certificate (PEM), as it becomes known
/// ([`CertStore::ca`]). The default never learns one.
#[derive(Clone, Debug)]
pub struct CaWatch(watch::Receiver<Option<Arc<str>>>);

impl CaWatch {
    /// The CA now, if known.
    pub fn current(&self) -> Option<Arc<str>> {
        self.0.borrow().clone()
    }

    /// Completes when the CA changes; `None` once it never will again.
    pub async fn changed(&mut self) -> Option<()> {
        self.0.changed().await.ok()
    }
}

impl Default for CaWatch {
    fn default() -> Self {
        CaWatch(watch::channel(None).1)
    }
}

impl PartialEq for CaWatch {
    fn eq(&self, other: &Self) -> bool {
        self.0.same_channel(&other.0)
    }
}

impl Eq for CaWatch {}

/// The rustls provider the operator uses everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
