# shellcheck shell=bash
# scripts/kube-local up --node: cluster DNS. CoreDNS runs as a host
# process beside kube-proxy (no image to build, and it forwards other
# names to the machine's own resolver), listening on the node's address,
# which pods reach through the bridge; the kube-dns Service's ClusterIP
# leads there, and the kubelet puts that address in pods' resolv.conf.

cluster_dns_ready() {
    curl -fsS --max-time 2 "http://127.0.0.1:$COREDNS_READY_PORT/ready"
}

start_cluster_dns() {
    write_kubeconfig "$STATE/coredns.kubeconfig" coredns
    render_to Corefile "$STATE/Corefile"
    # Server-side apply: idempotent, and `up` on a running node puts back
    # whatever was changed.
    render cluster-dns.yaml |
        "$KUBE_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" apply --server-side \
            --field-manager kube-local --force-conflicts -f - >/dev/null ||
        die "could not create the kube-dns Service and CoreDNS's RBAC"
    start coredns "$COREDNS_BIN/coredns" -conf "$STATE/Corefile"
    # Ready once the kubernetes plugin has listed Services and
    # EndpointSlices.
    wait_for 60 "CoreDNS ready" cluster_dns_ready ||
        die "CoreDNS is not ready; see $STATE/logs/coredns.log"
}
