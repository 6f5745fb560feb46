# shellcheck shell=bash
# scripts/kube-local images (and the node's pause image): OCI images
# built with umoci from binaries built here, imported into the node's
# containerd.

# An OCI image from a directory tree, imported into the node's
# containerd: name, rootfs directory, user, entrypoint, then `--` and the
# default command (may be empty). umoci writes the layout; containerd
# imports it as an OCI archive.
make_image() {
    local name=$1 rootfs=$2 user=$3 entrypoint=$4
    shift 4
    [[ ${1:-} == -- ]] && shift
    local work ref
    work=$(mktemp -d "$CACHE/image.XXXXXX")
    ref=goaway.local/$name:$IMAGE_TAG
    umoci init --layout "$work/layout"
    umoci new --image "$work/layout:$IMAGE_TAG"
    umoci unpack --image "$work/layout:$IMAGE_TAG" "$work/bundle" >/dev/null
    cp -a "$rootfs/." "$work/bundle/rootfs/"
    umoci repack --image "$work/layout:$IMAGE_TAG" "$work/bundle"
    local config=(--config.user "$user" --config.entrypoint "$entrypoint"
        --config.workingdir / --author goaway)
    if (($#)); then
        local c
        for c in "$@"; do config+=(--config.cmd "$c"); done
    fi
    umoci config --image "$work/layout:$IMAGE_TAG" "${config[@]}"
    # The archive's reference annotation becomes the image name.
    umoci tag --image "$work/layout:$IMAGE_TAG" "$IMAGE_TAG"
    (cd "$work/layout" && tar -cf "$work/image.tar" .)
    ctr_k8s images import --base-name "goaway.local/$name" --no-unpack=false \
        "$work/image.tar" >/dev/null
    rm -rf "$work"
    # Not `grep -q` after a pipe anywhere here: it exits at the first
    # match, the writer dies of SIGPIPE on its next line, and pipefail
    # turns that into a failure (it did, in CI, on this very line).
    ctr_k8s images ls -q | grep -x "$ref" >/dev/null || die "image $ref was not imported"
    log "image $ref imported"
}

# The sandbox image: scripts/images/pause.c, static.
pause_image() {
    ctr_k8s images ls -q | grep -x "$PAUSE_IMAGE" >/dev/null && return
    local rootfs
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    gcc -static -Os -s -o "$rootfs/pause" "$ROOT/scripts/images/pause.c"
    make_image pause "$rootfs" 65535:65535 /pause
    rm -rf "$rootfs"
}

# Copies binary $1 to $2/usr/local/bin/ with the shared libraries it
# loads (glibc, libgcc), as the distroless cc base image has them.
install_with_libs() {
    local bin=$1 rootfs=$2 lib
    install -D -m 0755 "$bin" "$rootfs/usr/local/bin/$(basename "$bin")"
    strip --strip-debug "$rootfs/usr/local/bin/$(basename "$bin")"
    for lib in $(ldd "$bin" | awk '/=>/ {print $3} !/=>/ && $1 ~ /^\// {print $1}'); do
        [[ -f $lib ]] || continue
        install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
    done
}

# goaway's images, from the binaries built here, imported into the node:
#   goaway.local/goaway-agent     the agent, as docker/agent.Dockerfile
#   goaway.local/goaway-operator  the operator, as docker/operator.Dockerfile
#   goaway.local/grpc-go-peer     the grpc-go test app and client
#                                 (tests/peers/go), for the end-to-end test
# Prints the path of a Helm values file that points the chart at them.
# $IMAGE_PROFILE is the cargo profile.
cmd_images() {
    if ! node_mode || ! running containerd; then
        die "images: the node is not up (scripts/kube-local up --node)"
    fi
    local dir
    case $IMAGE_PROFILE in
    dev | debug) dir=debug ;;
    *) dir=$IMAGE_PROFILE ;;
    esac
    log "images: cargo build --profile $IMAGE_PROFILE (goaway-agent, goaway-operator)"
    (cd "$ROOT" && cargo build --locked --profile "$IMAGE_PROFILE" -q \
        -p goaway-agent --bin goaway-agent -p goaway-operator --bin goaway-operator) >&2
    local target
    target=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    local b rootfs
    for b in goaway-agent goaway-operator; do
        rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        install_with_libs "$target/$dir/$b" "$rootfs"
        if [[ $b == goaway-operator ]]; then
            make_image "$b" "$rootfs" 65532:65532 "/usr/local/bin/$b" -- run
        else
            make_image "$b" "$rootfs" 65532:65532 "/usr/local/bin/$b"
        fi
        rm -rf "$rootfs"
    done >&2
    "$ROOT/scripts/build-peers" go >&2
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    install -D -m 0755 "$ROOT/tests/peers/.build/bin/grpc-go-peer" "$rootfs/usr/local/bin/grpc-go-peer"
    make_image grpc-go-peer "$rootfs" 65532:65532 /usr/local/bin/grpc-go-peer >&2
    rm -rf "$rootfs"
    local values=$STATE/images-values.yaml
    render_to images-values.yaml "$values"
    echo "$values"
}
