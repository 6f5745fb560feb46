//! The webhook over real TLS: a CA and serving certificate from the
//! operator's own CA code, the rustls server, an HTTPS client that trusts
//! only that CA (as the API server trusts the caBundle), a certificate
//! swapped in place, and a graceful shutdown.

use std::sync::Arc;

use axum::body::Body;
use goaway_operator::inject::AgentConfig;
use goaway_operator::metrics::Metrics;
use goaway_operator::tls::{CertStore, ca, provider};
use goaway_operator::webhook::{Webhook, server};
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use kube::runtime::reflector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

async fn post_review(addr: std::net::SocketAddr, ca_pem: &str) -> (u16, String) {
    post_review_to(addr, ca_pem, "goaway-operator.goaway-system.svc").await
}

/// Posts a review, verifying the server as `host` (a DNS name or an IP
/// address, as in a URL clientConfig).
async fn post_review_to(addr: std::net::SocketAddr, ca_pem: &str, host: &str) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(host.to_string()).unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/admission/no_matching_policy.json"
    ))
    .unwrap();
    let req = Request::post("/mutate")
        .header("host", host)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn api_server_trusting_the_ca_bundle_gets_answers_over_tls() {
    let names = ca::service_dns_names("goaway-operator", "goaway-system");
    let authority = ca::new_ca().unwrap();
    let (serving, _) = ca::new_serving(&authority, &names).unwrap();
    let certs = Arc::new(CertStore::new(provider()));
    certs
        .load_pem(serving.cert.as_bytes(), serving.key.as_bytes())
        .unwrap();

    let (store, _writer) = reflector::store();
    let webhook = Arc::new(Webhook::new(
        store,
        AgentConfig::default(),
        Arc::new(Metrics::default()),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, watch) = drain_rs::channel();
    let task = tokio::spawn(server::serve(
        listener,
        webhook.router(),
        server::Context {
            certs: certs.clone(),
            metrics: Arc::new(Metrics::default()),
        },
        server::Config::default(),
        watch,
    ));

    let (status, body) = post_review(addr, &authority.cert).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"allowed\":true"), "{body}");
    assert!(
        body.contains("11111111-0000-4000-8000-000000000008"),
        "{body}"
    );

    // Renewal keeps the CA: a new serving certificate is trusted as is.
    let (renewed, _) = ca::new_serving(&authority, &names).unwrap();
    assert_ne!(renewed.cert, serving.cert);
    certs
        .load_pem(renewed.cert.as_bytes(), renewed.key.as_bytes())
        .unwrap();
    assert_eq!(post_review(addr, &authority.cert).await.0, 200);

    stop.drain().await;
    task.await.unwrap().unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
}

#[test]
fn a_bad_certificate_keeps_the_previous_one() {
    let certs = CertStore::new(provider());
    assert!(certs.load_pem(b"not pem", b"nor this").is_err());
    assert!(!certs.is_loaded());
}

/// An operator outside the cluster is called by URL (the chart's
/// webhook.url, --webhook-host): the serving certificate must name the
/// URL's host, an IP address included, or the API server refuses it.
#[tokio::test]
async fn a_webhook_host_is_in_the_certificate_for_url_clients() {
    let names = ca::serving_names("goaway-operator", "goaway-system", &["127.0.0.1".into()]);
    assert_eq!(names.last().map(String::as_str), Some("127.0.0.1"));
    let authority = ca::new_ca().unwrap();
    let (serving, _) = ca::new_serving(&authority, &names).unwrap();
    let without = ca::service_dns_names("goaway-operator", "goaway-system");
    let (service_only, _) = ca::new_serving(&authority, &without).unwrap();

    let (store, _writer) = reflector::store();
    let webhook = Arc::new(Webhook::new(
        store,
        AgentConfig::default(),
        Arc::new(Metrics::default()),
    ));
    let certs = Arc::new(CertStore::new(provider()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, watch) = drain_rs::channel();
    let task = tokio::spawn(server::serve(
        listener,
        webhook.router(),
        server::Context {
            certs: certs.clone(),
            metrics: Arc::new(Metrics::default()),
        },
        server::Config::default(),
        watch,
    ));
    certs
        .load_pem(serving.cert.as_bytes(), serving.key.as_bytes())
        .unwrap();
    assert_eq!(
        post_review_to(addr, &authority.cert, "127.0.0.1").await.0,
        200
    );
    assert_eq!(post_review(addr, &authority.cert).await.0, 200);

    // Without the host, a client verifying 127.0.0.1 refuses the server.
    certs
        .load_pem(service_only.cert.as_bytes(), service_only.key.as_bytes())
        .unwrap();
    let refused =
        tokio::spawn(async move { post_review_to(addr, &authority.cert, "127.0.0.1").await });
    assert!(
        refused.await.is_err(),
        "a certificate without 127.0.0.1 was accepted"
    );

    stop.drain().await;
    task.await.unwrap().unwrap();
}
