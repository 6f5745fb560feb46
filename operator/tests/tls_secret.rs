//! The webhook certificate's life in the cluster (generate mode), against
//! the fake API server: created once and shared, renewed by the leader
//! only (keeping the CA), and the CA written into the webhook
//! configuration's caBundle.

mod support;

use goaway_operator::owner::Owner;
use goaway_operator::tls::secret::{patch_ca_bundle, sync_secret};
use goaway_operator::tls::{CertStore, ca, provider};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use support::fake_api::FakeApi;

fn data(api: &FakeApi, key: &str) -> String {
    let secret = api.get("secrets", "goaway-system", "webhook-tls").unwrap();
    secret["data"][key].as_str().unwrap().to_string()
}

#[tokio::test]
async fn certificate_is_created_shared_and_renewed_by_the_leader_only() {
    let api = FakeApi::new();
    let secrets: Api<Secret> = Api::namespaced(api.client(), "goaway-system");
    let names = ca::service_dns_names("goaway-operator", "goaway-system");
    let store = CertStore::new(provider());

    let ca_pem = sync_secret(
        &secrets,
        "webhook-tls",
        &names,
        false,
        &store,
        &Owner::unknown(),
    )
    .await
    .unwrap();
    assert!(store.is_loaded());
    assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let (cert, ca_crt) = (data(&api, "tls.crt"), data(&api, "ca.crt"));
    let secret = api.get("secrets", "goaway-system", "webhook-tls").unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");

    // Another replica reads the same certificate.
    let other = CertStore::new(provider());
    assert_eq!(
        sync_secret(
            &secrets,
            "webhook-tls",
            &names,
            false,
            &other,
            &Owner::unknown()
        )
        .await
        .unwrap(),
        ca_pem
    );
    assert_eq!(data(&api, "tls.crt"), cert);

    // The Service's names changed: a follower keeps serving what is there...
    let moved = ca::service_dns_names("goaway", "goaway-system");
    sync_secret(
        &secrets,
        "webhook-tls",
        &moved,
        false,
        &store,
        &Owner::unknown(),
    )
    .await
    .unwrap();
    assert_eq!(data(&api, "tls.crt"), cert);
    // ...and the leader renews the serving certificate under the same CA.
    assert_eq!(
        sync_secret(
            &secrets,
            "webhook-tls",
            &moved,
            true,
            &store,
            &Owner::unknown()
        )
        .await
        .unwrap(),
        ca_pem
    );
    assert_ne!(data(&api, "tls.crt"), cert);
    assert_eq!(data(&api, "ca.crt"), ca_crt);
}

#[tokio::test]
async fn leader_writes_the_ca_into_every_webhook_once() {
    let api = FakeApi::new();
    let client = api.client();
    let configs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    let config = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "goaway-operator"},
        "webhooks": [{
            "name": "inject.goaway.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": {"service": {"name": "goaway-operator", "namespace": "goaway-system", "path": "/mutate"}},
        }],
    }))
    .unwrap();
    configs
        .create(&PostParams::default(), &config)
        .await
        .unwrap();

    patch_ca_bundle(&client, "goaway-operator", "CA PEM")
        .await
        .unwrap();
    let stored = api
        .get("mutatingwebhookconfigurations", "", "goaway-operator")
        .unwrap();
    assert_eq!(
        stored["webhooks"][0]["clientConfig"]["caBundle"],
        "Q0EgUEVN"
    );
    let version = stored["metadata"]["resourceVersion"].clone();
    // Already current: no write.
    patch_ca_bundle(&client, "goaway-operator", "CA PEM")
        .await
        .unwrap();
    let again = api
        .get("mutatingwebhookconfigurations", "", "goaway-operator")
        .unwrap();
    assert_eq!(again["metadata"]["resourceVersion"], version);
    // A missing configuration is not an error (the chart may not have made it yet).
    patch_ca_bundle(&client, "absent", "CA PEM").await.unwrap();
}

/// The operator's Deployment, as `owner::resolve` finds it.
fn deployment_owner() -> Owner {
    let deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "goaway-operator", "namespace": "goaway-system", "uid": "deployment-uid"},
    }))
    .unwrap();
    Owner::known(goaway_operator::owner::reference(&deployment).unwrap())
}

fn owner_uids(api: &FakeApi) -> Vec<String> {
    let secret = api.get("secrets", "goaway-system", "webhook-tls").unwrap();
    secret["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["uid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_certificate_secret_is_owned_by_the_operators_deployment() {
    let names = ca::service_dns_names("goaway-operator", "goaway-system");
    let owner = deployment_owner();

    // Created with the owner known: owned from the start.
    let api = FakeApi::new();
    let secrets: Api<Secret> = Api::namespaced(api.client(), "goaway-system");
    let store = CertStore::new(provider());
    sync_secret(&secrets, "webhook-tls", &names, false, &store, &owner)
        .await
        .unwrap();
    assert_eq!(owner_uids(&api), ["deployment-uid"]);
    // A renewal (the Service's names changed) keeps it, once.
    let moved = ca::service_dns_names("goaway", "goaway-system");
    sync_secret(&secrets, "webhook-tls", &moved, true, &store, &owner)
        .await
        .unwrap();
    assert_eq!(owner_uids(&api), ["deployment-uid"]);

    // Created before the owner was known (or by an older release): a
    // follower leaves it; the leader adds the owner, keeping the CA.
    let api = FakeApi::new();
    let secrets: Api<Secret> = Api::namespaced(api.client(), "goaway-system");
    let ca_pem = sync_secret(
        &secrets,
        "webhook-tls",
        &names,
        false,
        &store,
        &Owner::unknown(),
    )
    .await
    .unwrap();
    assert!(owner_uids(&api).is_empty());
    sync_secret(&secrets, "webhook-tls", &names, false, &store, &owner)
        .await
        .unwrap();
    assert!(owner_uids(&api).is_empty());
    assert_eq!(
        sync_secret(&secrets, "webhook-tls", &names, true, &store, &owner)
            .await
            .unwrap(),
        ca_pem
    );
    assert_eq!(owner_uids(&api), ["deployment-uid"]);
    sync_secret(&secrets, "webhook-tls", &names, true, &store, &owner)
        .await
        .unwrap();
    assert_eq!(owner_uids(&api), ["deployment-uid"]);
}
