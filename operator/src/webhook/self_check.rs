//! Whether the API server can call this replica's webhook: the part of
//! the operator's readiness ([`crate::admin::Readiness`]) that says
//! injection works, not only that the process runs.
//!
//! A replica could be "ready" with its certificate loaded while the
//! MutatingWebhookConfiguration's `caBundle` was still empty or named
//! another CA: the API server's calls then fail TLS and, with
//! `failurePolicy: Ignore`, pods are admitted without the agent while
//! `helm install --wait` reports success. So every [`PERIOD`] (every
//! [`RETRY`] while it fails) each
//! replica reads the configuration (`get` on that one object) and, for
//! each of its webhooks, does what the API server does: a TLS handshake
//! with this replica's own webhook listener, for the server name the
//! API server uses (the Service's `<name>.<namespace>.svc`, or the URL's
//! host), verified against that webhook's `caBundle`, then a request the
//! webhook server answers (`GET` [`READY_PATH`], which reviews nothing
//! and counts nothing). The listener is called directly, not through
//! the Service: a Service sends nothing to pods that are not ready, so
//! a replica could never become ready through it.
//!
//! The review itself is not exercised: it is a pure function, and one
//! that fails admits the pod unchanged, as a failed call would.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, WebhookClientConfig,
};
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;

use crate::admin::Readiness;

/// How often the check runs while it passes...
pub const PERIOD: Duration = Duration::from_secs(5);
/// ...and while it fails, so that a replica turns ready soon after the
/// leader writes the caBundle.
pub const RETRY: Duration = Duration::from_secs(1);
/// How long one webhook's handshake and answer may take.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The webhook server's own readiness route (no review, no metrics).
pub const READY_PATH: &str = "/readyz";

/// What the check needs: plain data, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The MutatingWebhookConfiguration that sends pods here.
    pub webhook_config: String,
    /// Where this replica's webhook listens; an unspecified address is
    /// reached on loopback.
    pub webhook_addr: SocketAddr,
}

/// Runs the check every [`PERIOD`] (every [`RETRY`] while it fails) until
/// `shutdown`, telling `readiness`; a failure also notifies `failed`
/// (the certificate upkeep, whose leader then writes the caBundle again
/// at once, [`crate::tls::secret`]).
pub async fn run(
    client: Client,
    config: Config,
    readiness: Arc<Readiness>,
    failed: Arc<Notify>,
    shutdown: drain_rs::Watch,
) {
    let api = Api::<MutatingWebhookConfiguration>::all(client);
    let mut signalled = std::pin::pin!(shutdown.signaled());
    loop {
        let verdict = check(&api, &config).await;
        let period = if verdict.is_ok() {
            PERIOD
        } else {
            failed.notify_one();
            RETRY
        };
        readiness.webhook_checked(verdict);
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = &mut signalled => return,
        }
    }
}

/// One check: `Ok` when the API server could call this replica through
/// every webhook of the configuration, else why not.
pub async fn check(api: &Api<MutatingWebhookConfiguration>, config: &Config) -> Result<(), String> {
    let name = &config.webhook_config;
    let found = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading MutatingWebhookConfiguration {name}: {e}"))?
        .ok_or_else(|| format!("MutatingWebhookConfiguration {name} not found"))?;
    let webhooks = found.webhooks.unwrap_or_default();
    if webhooks.is_empty() {
        return Err(format!(
            "MutatingWebhookConfiguration {name} has no webhook"
        ));
    }
    for webhook in &webhooks {
        let which = format!("webhook {} of {name}", webhook.name);
        call(&webhook.client_config, local(config.webhook_addr))
            .await
            .map_err(|e| format!("{which}: {e}"))?;
    }
    Ok(())
}

/// Where to reach a listener bound to `addr`.
fn local(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// The server name the API server checks the webhook's certificate for.
pub fn server_name(client_config: &WebhookClientConfig) -> Result<String, String> {
    if let Some(service) = &client_config.service {
        return Ok(format!("{}.{}.svc", service.name, service.namespace));
    }
    let url = client_config
        .url
        .as_deref()
        .ok_or("neither a service nor a url")?;
    let uri: http::Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("url {url:?} has no host"))?;
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string())
}

/// A TLS handshake with `target` as the API server would make it for
/// `client_config`, and one request answered.
async fn call(client_config: &WebhookClientConfig, target: SocketAddr) -> Result<(), String> {
    let bundle = client_config
        .ca_bundle
        .as_ref()
        .filter(|b| !b.0.is_empty())
        .ok_or("caBundle is empty")?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bundle.0) {
        let cert = cert.map_err(|e| format!("caBundle is not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("caBundle holds an unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("caBundle holds no certificate".into());
    }
    let name = server_name(client_config)?;
    let server = ServerName::try_from(name.clone()).map_err(|e| format!("{name:?}: {e}"))?;
    let tls = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let exchange = async {
        let tcp = TcpStream::connect(target)
            .await
            .map_err(|e| format!("connecting to {target}: {e}"))?;
        let mut stream = TlsConnector::from(Arc::new(tls))
            .connect(server, tcp)
            .await
            .map_err(|e| format!("TLS as {name} on {target}, checked against the caBundle: {e}"))?;
        let request =
            format!("GET {READY_PATH} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 12];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        match &head {
            b"HTTP/1.1 200" => Ok(()),
            other => Err(format!(
                "answered {:?}",
                String::from_utf8_lossy(other).trim()
            )),
        }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?} on {target}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_config(yaml: &str) -> WebhookClientConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_server_name_is_the_services_or_the_urls_host() {
        let service = client_config("service: {name: goaway-operator, namespace: goaway-system}");
        assert_eq!(
            server_name(&service).unwrap(),
            "goaway-operator.goaway-system.svc"
        );
        let url = client_config("url: https://127.0.0.1:9443/mutate");
        assert_eq!(server_name(&url).unwrap(), "127.0.0.1");
        let v6 = client_config("url: 'https://[::1]:9443/mutate'");
        assert_eq!(server_name(&v6).unwrap(), "::1");
        assert!(server_name(&client_config("{}")).is_err());
    }

    #[test]
    fn an_unspecified_listen_address_is_reached_on_loopback() {
        assert_eq!(
            local("0.0.0.0:9443".parse().unwrap()),
            "127.0.0.1:9443".parse().unwrap()
        );
        assert_eq!(
            local("[::]:9443".parse().unwrap()),
            "[::1]:9443".parse().unwrap()
        );
        assert_eq!(
            local("10.0.0.7:9443".parse().unwrap()),
            "10.0.0.7:9443".parse().unwrap()
        );
    }
}
