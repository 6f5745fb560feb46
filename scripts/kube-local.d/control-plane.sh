# shellcheck shell=bash
# scripts/kube-local up: certificates, kubeconfigs, etcd, kube-apiserver
# and kube-controller-manager.

# A certificate signed by the local CA: name, subject, extensions
# (openssl -extfile lines, e.g. subjectAltName and extendedKeyUsage).
issue_cert() {
    local name=$1 subject=$2 ext=$3
    [[ -f $PKI/$name.crt ]] && return
    openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
    openssl req -new -key "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr" 2>/dev/null
    printf '%b\n' "$ext" >"$PKI/$name.ext"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -CAcreateserial -days 365 -sha256 -extfile "$PKI/$name.ext" \
        -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

make_pki() {
    mkdir -p "$PKI"
    chmod 700 "$STATE" "$PKI"
    if [[ ! -f $PKI/ca.crt ]]; then
        openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
        openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=goaway-kube-local-ca" \
            -days 3650 -sha256 -out "$PKI/ca.crt" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    fi
    local client="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
    issue_cert apiserver "/CN=kube-apiserver" \
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:$ADDRESS,IP:$NODE_IP,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN"
    # system:masters: the admin, and the API server towards kubelets.
    issue_cert admin "/O=system:masters/CN=kubernetes-admin" "$client"
    issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
    # The controller manager's bootstrap RBAC identity.
    issue_cert controller-manager "/CN=system:kube-controller-manager" "$client"
    # The node's components, each with its bootstrap RBAC identity: the
    # kubelet in system:nodes (the Node authorizer), the scheduler and
    # kube-proxy (system:node-proxier is bound to system:kube-proxy).
    issue_cert scheduler "/CN=system:kube-scheduler" "$client"
    issue_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
    issue_cert kube-proxy "/CN=system:kube-proxy" "$client"
    # CoreDNS, bound to the ClusterRole system:coredns (templates/
    # cluster-dns.yaml), as kubeadm binds its service account.
    issue_cert coredns "/CN=system:coredns" "$client"
    # The kubelet's serving certificate, for the API server's logs/exec.
    issue_cert kubelet-serving "/CN=$NODE_NAME" \
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
    # Service-account tokens: the API server verifies with the public key,
    # the controller manager's token controller signs with the private one.
    if [[ ! -f $PKI/sa.key ]]; then
        openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
        openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    fi
}

# A kubeconfig for the client certificate $2, written to $1.
# shellcheck disable=SC2034 # the capitals are read by render (templates/kubeconfig.yaml)
write_kubeconfig() {
    local path=$1 USER_NAME=$2
    local SERVER_URL CA_DATA CERT_DATA KEY_DATA
    SERVER_URL=https://$(server_address):$APISERVER_PORT
    CA_DATA=$(base64 -w0 "$PKI/ca.crt")
    CERT_DATA=$(base64 -w0 "$PKI/$USER_NAME.crt")
    KEY_DATA=$(base64 -w0 "$PKI/$USER_NAME.key")
    render_to kubeconfig.yaml "$path" 600
}

need_binaries() {
    local b
    for b in "$ETCD_BIN/etcd" "$KUBE_BIN/kube-apiserver" \
        "$KUBE_BIN/kube-controller-manager"; do
        [[ -x $b ]] || die "$b is missing: run scripts/kube-local build first"
    done
}

# GET on the API server as the admin (curl: `up` needs no kubectl).
apiserver_get() {
    curl -fsS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" \
        --key "$PKI/admin.key" "https://$(server_address):$APISERVER_PORT$1"
}

apiserver_ready() { apiserver_get /readyz; }

start_control_plane() {
    local bind=$ADDRESS reconciler=none
    if node_mode; then
        # Pods reach the API server through the `kubernetes` Service, whose
        # endpoint is the advertise address; the lease reconciler keeps it.
        bind=$NODE_IP
        reconciler=lease
    fi
    start etcd "$ETCD_BIN/etcd" \
        --name goaway-local \
        --data-dir "$STATE/etcd" \
        --listen-client-urls "http://$ADDRESS:$ETCD_PORT" \
        --advertise-client-urls "http://$ADDRESS:$ETCD_PORT" \
        --listen-peer-urls "http://$ADDRESS:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://$ADDRESS:$ETCD_PEER_PORT" \
        --initial-cluster "goaway-local=http://$ADDRESS:$ETCD_PEER_PORT" \
        --log-level warn
    wait_for 60 "etcd" curl -fsS "http://$ADDRESS:$ETCD_PORT/health" ||
        die "etcd did not start; see $STATE/logs/etcd.log"

    # Without a node, --endpoint-reconciler-type none: the `kubernetes`
    # Service's Endpoints would name the loopback advertise address, which
    # the API server refuses in Endpoints (it logs that forever).
    start kube-apiserver "$KUBE_BIN/kube-apiserver" \
        --bind-address "$bind" \
        --advertise-address "$bind" \
        --secure-port "$APISERVER_PORT" \
        --etcd-servers "http://$ADDRESS:$ETCD_PORT" \
        --tls-cert-file "$PKI/apiserver.crt" \
        --tls-private-key-file "$PKI/apiserver.key" \
        --client-ca-file "$PKI/ca.crt" \
        --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority "$PKI/ca.crt" \
        --kubelet-preferred-address-types InternalIP \
        --authorization-mode Node,RBAC \
        --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
        --service-account-key-file "$PKI/sa.pub" \
        --service-account-signing-key-file "$PKI/sa.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --endpoint-reconciler-type "$reconciler" \
        --allow-privileged=true \
        --profiling=false
    wait_for 120 "kube-apiserver /readyz" apiserver_ready ||
        die "kube-apiserver is not ready; see $STATE/logs/kube-apiserver.log"

    # --use-service-account-credentials: each controller acts as its own
    # service account, so RBAC applies as in a real cluster.
    start kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
        --kubeconfig "$STATE/controller-manager.kubeconfig" \
        --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
        --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
        --bind-address "$ADDRESS" \
        --secure-port "$KCM_PORT" \
        --leader-elect=false \
        --use-service-account-credentials=true \
        --service-account-private-key-file "$PKI/sa.key" \
        --root-ca-file "$PKI/ca.crt" \
        --cluster-signing-cert-file "$PKI/ca.crt" \
        --cluster-signing-key-file "$PKI/ca.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --profiling=false
    wait_for 60 "kube-controller-manager /healthz" \
        curl -fsS --cacert "$PKI/ca.crt" -k "https://$ADDRESS:$KCM_PORT/healthz" ||
        die "kube-controller-manager is not healthy; see $STATE/logs/kube-controller-manager.log"
    # The namespace `default` exists once the API server bootstrapped it;
    # tests create objects there.
    wait_for 60 "namespace default" apiserver_get /api/v1/namespaces/default ||
        die "namespace default never appeared"
}

# Reverse start order: the clients of etcd, then etcd.
stop_control_plane() {
    local c
    for c in kube-controller-manager kube-apiserver etcd; do stop "$c"; done
}
