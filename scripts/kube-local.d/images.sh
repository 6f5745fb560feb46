# shellcheck shell=bash
# OCI images without a Docker engine: a directory tree made into one
# reproducible layer, written into an OCI image layout with umoci. Used by
# scripts/kube-local images (and the node's pause image), which imports
# them into the node's containerd, and by scripts/release, which pushes
# them to a registry: one recipe for both. Needs log, die and $ROOT.

# The time every image and every file in it carries: $SOURCE_DATE_EPOCH
# (https://reproducible-builds.org/specs/source-date-epoch/) if set, else
# the commit time of HEAD, so the same commit gives the same bytes.
image_epoch() {
    if [[ -n ${SOURCE_DATE_EPOCH:-} ]]; then
        echo "$SOURCE_DATE_EPOCH"
    else
        git -C "$ROOT" log -1 --format=%ct HEAD 2>/dev/null || echo 0
    fi
}

# The ELF interpreter and the NEEDED entries of file $1. Read from the
# headers, not with ldd, which runs the binary's own loader and so works
# for this machine's architecture only.
elf_interpreter() { readelf -l "$1" | sed -n 's/.*\[Requesting program interpreter: \(.*\)\]/\1/p'; }
elf_needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }

# Copies binary $1 to $2/usr/local/bin/ with the shared libraries it
# loads, recursively (glibc and libgcc, as the distroless cc base image
# has them), each at /lib/<triplet>/ where the loader looks, and the
# loader at the path the binary names. $3 is the Debian multiarch triplet
# (default: this machine's), $4 the directory the libraries are copied
# from (default /lib/$3; for another architecture the cross sysroot,
# /usr/$3/lib). Each copied library's source path is printed on stdout.
install_with_libs() {
    local bin=$1 rootfs=$2 triplet=${3:-$(gcc -print-multiarch)}
    local libdir=${4:-/lib/$triplet} dest interp lib
    dest=$rootfs/usr/local/bin/$(basename "$bin")
    install -D -m 0755 "$bin" "$dest"
    # The release profile strips debug info itself; a dev build keeps
    # line tables, which make the image several times larger.
    if [[ $libdir == "/lib/$(gcc -print-multiarch)" ]]; then strip --strip-debug "$dest"; fi
    interp=$(elf_interpreter "$bin")
    if [[ -n $interp ]]; then
        [[ -f $libdir/$(basename "$interp") ]] || die "$bin: its loader $interp is not in $libdir"
        install -D -m 0755 "$(readlink -f "$libdir/$(basename "$interp")")" "$rootfs$interp"
        echo "$libdir/$(basename "$interp")"
    fi
    local queue seen more
    seen=" $(basename "$interp") "
    mapfile -t queue < <(elf_needed "$bin")
    while ((${#queue[@]})); do
        lib=${queue[0]}
        queue=("${queue[@]:1}")
        [[ $seen == *" $lib "* ]] && continue
        seen+="$lib "
        [[ -f $libdir/$lib ]] || die "$bin needs $lib, which is not in $libdir"
        install -D -m 0755 "$(readlink -f "$libdir/$lib")" "$rootfs/lib/$triplet/$lib"
        echo "$libdir/$lib"
        mapfile -t more < <(elf_needed "$libdir/$lib")
        queue+=("${more[@]}")
    done
}

# An image from directory tree $3 into the OCI layout $1 (created if
# missing) under tag $2. Options: --user UID:GID, --entrypoint PATH,
# --arch (OCI name, default amd64), --label KEY=VALUE (repeatable); then
# `--` and the default command (may be empty).
#
# Reproducible: the tree is one layer made by GNU tar in name order, every
# file owned by 0:0 with the modes normalised (no group or other write,
# whatever the umask) and the mtime of image_epoch, which is also the
# image's and its history's creation time; umoci compresses it (the same
# input gives the same gzip stream) and writes the config and manifest.
oci_image() {
    local layout=$1 tag=$2 rootfs=$3
    shift 3
    local user=0:0 entrypoint="" arch=amd64 config=()
    while (($#)); do
        case $1 in
        --user) user=$2 ;;
        --entrypoint) entrypoint=$2 ;;
        --arch) arch=$2 ;;
        --label) config+=(--config.label "$2") ;;
        --) shift && break ;;
        *) die "oci_image: unknown option $1" ;;
        esac
        shift 2
    done
    local c
    for c in "$@"; do config+=(--config.cmd "$c"); done
    [[ -n $entrypoint ]] && config+=(--config.entrypoint "$entrypoint")
    local epoch created layer top
    epoch=$(image_epoch)
    created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
    [[ -d $layout ]] || umoci init --layout "$layout"
    umoci new --image "$layout:$tag"
    layer=$(mktemp "${TMPDIR:-/tmp}/layer.XXXXXX")
    # The tree's entries, not `.`: the layer then does not set the
    # image's root directory (whose mode would be the temporary
    # directory's 0700).
    mapfile -t top < <(cd "$rootfs" && LC_ALL=C ls -A)
    tar -C "$rootfs" -cf "$layer" --format=gnu --sort=name --mtime="@$epoch" \
        --owner=0 --group=0 --numeric-owner --mode=u+rwX,go=rX "${top[@]}"
    umoci raw add-layer --image "$layout:$tag" --history.created "$created" \
        --history.created_by "goaway scripts/kube-local.d/images.sh" "$layer"
    rm -f "$layer"
    umoci config --image "$layout:$tag" --no-history --created "$created" \
        --os linux --architecture "$arch" --author goaway \
        --config.user "$user" --config.workingdir / "${config[@]}"
    umoci gc --layout "$layout"
}

# The digest of the manifest tagged $2 in OCI layout $1.
oci_digest() {
    jq -r --arg tag "$2" \
        '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $tag) | .digest' \
        "$1/index.json"
}

# An OCI image from a directory tree, imported into the node's
# containerd as goaway.local/NAME:$IMAGE_TAG: name, rootfs directory,
# user, entrypoint, then `--` and the default command (may be empty).
make_image() {
    local name=$1 rootfs=$2 user=$3 entrypoint=$4
    shift 4
    [[ ${1:-} == -- ]] && shift
    local work ref
    work=$(mktemp -d "$CACHE/image.XXXXXX")
    ref=goaway.local/$name:$IMAGE_TAG
    oci_image "$work/layout" "$IMAGE_TAG" "$rootfs" --user "$user" --entrypoint "$entrypoint" -- "$@"
    # The archive's reference annotation (the tag) becomes the image name.
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

# goaway's images, from the binaries built here, imported into the node:
#   goaway.local/goaway-agent     the agent, as scripts/release builds it
#   goaway.local/goaway-operator  the operator, likewise
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
        install_with_libs "$target/$dir/$b" "$rootfs" >/dev/null
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
