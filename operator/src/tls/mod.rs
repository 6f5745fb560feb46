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

pub mod ca;
pub mod secret;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

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
}

impl CertStore {
    /// An empty store: handshakes fail until [`CertStore::load_pem`].
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        CertStore {
            provider,
            current: RwLock::new(None),
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

/// The rustls provider the operator uses everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
