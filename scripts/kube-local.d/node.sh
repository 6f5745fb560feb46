# shellcheck shell=bash
# scripts/kube-local up --node: the host's network, containerd, the
# kubelet, kube-scheduler and kube-proxy; and taking them down.

ctr_k8s() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

need_node_tools() {
    local b
    ((EUID == 0)) || die "up --node needs root (containers, iptables, a bridge)"
    for b in containerd containerd-shim-runc-v2 runc ctr iptables conntrack ip umoci gcc; do
        command -v "$b" >/dev/null ||
            die "$b is missing: apt-get install containerd runc containernetworking-plugins iptables conntrack iproute2 umoci gcc"
    done
    [[ -x $CNI_BIN/bridge && -x $CNI_BIN/host-local && -x $CNI_BIN/loopback ]] ||
        die "CNI plugins are missing in $CNI_BIN: apt-get install containernetworking-plugins"
    for b in "$KUBE_BIN/kube-scheduler" "$KUBE_BIN/kubelet" "$KUBE_BIN/kube-proxy" \
        "$KUBE_BIN/kubectl" "$COREDNS_BIN/coredns"; do
        [[ -x $b ]] || die "$b is missing: run scripts/kube-local build first"
    done
}

# The host side: the node address, forwarding between pods through the
# bridge (a ClusterIP answered by a pod on the same bridge is DNATed and
# routed back out), and bridged traffic through iptables (kube-proxy's
# rules see pod-to-pod packets).
node_network() {
    ip addr show dev lo | grep " $NODE_IP/32" >/dev/null || ip addr add "$NODE_IP/32" dev lo
    sysctl -qw net.ipv4.ip_forward=1
    sysctl -qw net.bridge.bridge-nf-call-iptables=1
}

start_containerd() {
    mkdir -p "$CONTAINERD_DIR" "$STATE/cni/net.d"
    render_to containerd.toml "$CONTAINERD_DIR/config.toml"
    # One bridge, gateway on the host; no masquerading (pods talk to each
    # other and to the node only, and kube-proxy masquerades what it must).
    render_to cni.conflist "$STATE/cni/net.d/10-goaway.conflist"
    write_registry_hosts
    # /run/netns, where the CRI puts pod network namespaces, as a shared
    # mount point of its own, as `ip netns add` makes it. If `ip netns add`
    # did that later, its bind mount would duplicate every pod namespace's
    # mount and the kubelet could no longer delete those pods ("remove
    # netns: ... device or resource busy").
    mkdir -p /run/netns
    mountpoint -q /run/netns || mount --bind /run/netns /run/netns
    mount --make-shared /run/netns
    start containerd containerd --config "$CONTAINERD_DIR/config.toml" --log-level warn
    wait_for 60 "containerd" ctr --address "$CONTAINERD_SOCK" version ||
        die "containerd did not start; see $STATE/logs/containerd.log"
}

write_node_configs() {
    write_kubeconfig "$STATE/kubelet.kubeconfig" kubelet
    write_kubeconfig "$STATE/scheduler.kubeconfig" scheduler
    write_kubeconfig "$STATE/kube-proxy.kubeconfig" kube-proxy
    mkdir -p "$STATE/kubelet" "$STATE/pod-logs"
    render_to kubelet.yaml "$STATE/kubelet/config.yaml"
    render_to kube-proxy.yaml "$STATE/kube-proxy.yaml"
}

node_ready() {
    apiserver_get "/api/v1/nodes/$NODE_NAME" |
        tr -d ' \n' | grep '"type":"Ready","status":"True"' >/dev/null
}

start_node() {
    node_network
    start_containerd
    pause_image
    write_node_configs
    start kube-scheduler "$KUBE_BIN/kube-scheduler" \
        --kubeconfig "$STATE/scheduler.kubeconfig" \
        --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
        --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
        --bind-address "$ADDRESS" \
        --leader-elect=false
    start kubelet "$KUBE_BIN/kubelet" \
        --config "$STATE/kubelet/config.yaml" \
        --kubeconfig "$STATE/kubelet.kubeconfig" \
        --root-dir "$STATE/kubelet" \
        --hostname-override "$NODE_NAME" \
        --node-ip "$NODE_IP"
    start kube-proxy "$KUBE_BIN/kube-proxy" --config "$STATE/kube-proxy.yaml"
    start_cluster_dns
    wait_for 180 "node $NODE_NAME Ready" node_ready ||
        die "node $NODE_NAME is not Ready; see $STATE/logs/kubelet.log"
    log "node $NODE_NAME Ready ($NODE_IP, pods $POD_SUBNET, DNS $CLUSTER_DNS_IP)"
}

# Pod network namespaces left by the CRI, some maybe duplicated under a
# later bind mount of /run/netns itself (see start_containerd): unmounted
# until none is left. Run by every `down`, node or not.
cleanup_pod_netns() {
    local ns m
    for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
        ip netns delete "$ns" 2>/dev/null || true
    done
    # At most three rounds: each unmounts one layer of duplicates.
    for _ in 1 2 3; do
        ns=$(awk '$2 ~ "^/run/netns/cni-" {print $2}' /proc/mounts | sort -u)
        [[ -z $ns ]] && break
        for m in $ns; do umount -l "$m" 2>/dev/null || true; done
        if awk '$2 ~ "^/run/netns/cni-"' /proc/mounts | grep . >/dev/null; then
            umount -l /run/netns 2>/dev/null || true
        fi
    done
    rm -f /run/netns/cni-* 2>/dev/null || true
}

# Everything the node left on the host: containers (the kubelet is
# stopped first, so nothing restarts them), their shims, network
# namespaces, mounts under the state directory, the bridge, kube-proxy's
# iptables rules and the node address.
stop_node() {
    local c
    for c in coredns kube-proxy kubelet kube-scheduler; do stop "$c"; done
    if running containerd; then
        local task
        for task in $(ctr_k8s tasks ls -q 2>/dev/null); do
            ctr_k8s tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
        done
        sleep 1
        for task in $(ctr_k8s tasks ls -q 2>/dev/null); do
            ctr_k8s tasks delete -f "$task" >/dev/null 2>&1 || true
        done
    fi
    stop containerd
    pkill -KILL -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true
    # Mount points are paths without blanks (ours, under the state
    # directory); deepest first.
    local m
    awk -v s="$STATE/" 'index($2, s) == 1 {print $2}' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
    ip link delete "$BRIDGE" 2>/dev/null || true
    if [[ -x $KUBE_BIN/kube-proxy ]]; then
        "$KUBE_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
    fi
    # The kubelet's own chains (it drops non-loopback traffic to 127/8).
    local table chain
    for table in filter nat mangle; do
        iptables -t "$table" -S 2>/dev/null | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j KUBE-' |
            sed 's/^-A/-D/' | while read -r rule; do
                # iptables-save quoting is the shell's.
                eval "iptables -t $table $rule" 2>/dev/null || true
            done || true # grep finding nothing is fine
        for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
            iptables -t "$table" -F "$chain" 2>/dev/null || true
            iptables -t "$table" -X "$chain" 2>/dev/null || true
        done
    done
    ip addr delete "$NODE_IP/32" dev lo 2>/dev/null || true
}
