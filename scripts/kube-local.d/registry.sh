# shellcheck shell=bash
# scripts/kube-local registry: an OCI registry on loopback (Debian's
# docker-registry, plain HTTP) that scripts/release pushes to and the
# node's containerd pulls from (the registry's hosts.toml, written by
# start_containerd, lets it speak plain HTTP to localhost:$REGISTRY_PORT).

need_registry_tools() {
    command -v docker-registry >/dev/null || die "docker-registry is missing: apt-get install docker-registry"
}

registry_ready() { curl -sf "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null; }

# Starts the registry unless it runs; its data lives in the state
# directory, so `down` removes it. Prints the registry's name.
cmd_registry() {
    (($# == 0)) || die "registry: no arguments expected"
    need_registry_tools
    mkdir -p "$STATE/registry"
    render_to registry.yml "$STATE/registry/config.yml"
    start registry docker-registry serve "$STATE/registry/config.yml"
    wait_for 30 "the registry on 127.0.0.1:$REGISTRY_PORT" registry_ready ||
        die "the registry did not start; see $STATE/logs/registry.log"
    echo "$REGISTRY"
}

# The node's containerd reads registry host configs from
# $CONTAINERD_DIR/certs.d (config_path): plain HTTP for the loopback
# registry, whether or not it runs.
write_registry_hosts() {
    mkdir -p "$CONTAINERD_DIR/certs.d/$REGISTRY"
    render_to registry-hosts.toml "$CONTAINERD_DIR/certs.d/$REGISTRY/hosts.toml"
}
