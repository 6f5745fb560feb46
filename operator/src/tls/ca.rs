//! The operator's own certificate authority (rcgen): a long-lived CA whose
//! certificate is the webhook's `caBundle`, and a serving certificate it
//! signs for the webhook Service's DNS names. Renewing the serving
//! certificate keeps the CA, so the `caBundle` never changes under a
//! running API server.

use k8s_openapi::jiff::{Timestamp, ToSpan, tz::TimeZone};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

use crate::{Error, Result};

/// How long the CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// How long a serving certificate is valid.
pub const SERVING_VALIDITY_DAYS: i64 = 365;

/// PEM-encoded certificate and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// The PKCS#8 private key.
    pub key: String,
}

fn err(e: rcgen::Error) -> Error {
    Error::Certificate(e.to_string())
}

/// rcgen wants a `time` date; whole days are precise enough here.
fn validity(params: &mut CertificateParams, days: i64) -> Result<Timestamp> {
    let now = Timestamp::now();
    let until = now
        .checked_add((days * 24).hours())
        .map_err(|e| Error::Certificate(e.to_string()))?;
    let day = |t: Timestamp| {
        let d = t.to_zoned(TimeZone::UTC).date();
        // jiff months are 1..=12 and days 1..=31: always valid for rcgen.
        date_time_ymd(i32::from(d.year()), d.month() as u8, d.day() as u8)
    };
    let yesterday = now
        .checked_sub(24.hours())
        .map_err(|e| Error::Certificate(e.to_string()))?;
    params.not_before = day(yesterday);
    params.not_after = day(until);
    Ok(until)
}

/// A new self-signed CA.
pub fn new_ca() -> Result<Pem> {
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "goaway-operator webhook CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_VALIDITY_DAYS)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A serving certificate for `dns_names` signed by `ca`, and its expiry.
pub fn new_serving(ca: &Pem, dns_names: &[String]) -> Result<(Pem, Timestamp)> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(dns_names.to_vec()).map_err(err)?;
    if let Some(first) = dns_names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let until = validity(&mut params, SERVING_VALIDITY_DAYS)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    Ok((
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        },
        until,
    ))
}

/// The names the API server may use for the webhook Service.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// The serving certificate's names: the Service's, then `hosts` (DNS
/// names or IP addresses the API server may call the webhook by, as in a
/// URL clientConfig), each once.
pub fn serving_names(service: &str, namespace: &str, hosts: &[String]) -> Vec<String> {
    let mut names = service_dns_names(service, namespace);
    for host in hosts {
        if !host.is_empty() && !names.contains(host) {
            names.push(host.clone());
        }
    }
    names
}
