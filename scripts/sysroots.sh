#!/usr/bin/env bash
# Foreign Python sysroots for running bundles under qemu-user (tests/test_bundle.py):
#   aarch64  Debian 12 (bookworm) python3.11
#   riscv64  Debian 13 (trixie)   python3.13   (bookworm has no riscv64)
# Debs come from the Debian mirror through a private apt configuration, so the
# system's apt state is left alone, and are unpacked with `dpkg -x` into
#   ${LLAMAZIP_CACHE:-~/.cache/llamazip}/sysroots/<arch>/
# Each sysroot is about 60 MB; an existing one is kept. Usage: scripts/sysroots.sh [ARCH...]
set -euo pipefail

CACHE="${LLAMAZIP_CACHE:-$HOME/.cache/llamazip}"
DEST="$CACHE/sysroots"
# The mirror this machine's apt already uses (first Debian archive URI in its sources).
system_mirror() {
    local uri
    uri=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
            2>/dev/null | grep -v -- '-security' | grep -oE 'https?://[^ ]+' | head -n 1)
    echo "${uri%/}"
}
MIRROR="${DEBIAN_MIRROR:-$(system_mirror)}"
[ -n "$MIRROR" ] || { echo "sysroots.sh: no Debian mirror in apt's sources; set DEBIAN_MIRROR" >&2; exit 1; }
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

build_sysroot() {
    local arch=$1 debarch=$2 suite=$3 python=$4
    local root="$DEST/$arch"
    if [ -x "$root/usr/bin/$python" ]; then
        return
    fi
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/root"
    touch "$work/status"
    echo "deb [arch=$debarch signed-by=$KEYRING] $MIRROR $suite main" > "$work/sources.list"
    cat > "$work/apt.conf" <<EOF
Dir::State "$work";
Dir::State::Lists "$work/lists";
Dir::State::status "$work/status";
Dir::Cache "$work/cache";
Dir::Etc::SourceList "$work/sources.list";
Dir::Etc::SourceParts "/nonexistent";
APT::Architecture "$debarch";
APT::Architectures { "$debarch"; };
APT::Sandbox::User "root";
EOF
    export APT_CONFIG="$work/apt.conf"
    echo "sysroot $arch: $python from Debian $suite" >&2
    apt-get update -qq
    # Every real package the interpreter and its standard library depend on.
    local packages
    packages=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "$python-minimal" "lib$python-stdlib" \
        | grep -E '^[a-z0-9]' | sort -u)
    (cd "$work/debs" && apt-get download -qq $packages)
    for deb in "$work"/debs/*.deb; do
        dpkg -x "$deb" "$work/root"
    done
    # Merged /usr (trixie): the ELF interpreter is looked up under /lib.
    [ -e "$work/root/lib" ] || ln -s usr/lib "$work/root/lib"
    unset APT_CONFIG
    mkdir -p "$DEST"
    rm -rf "$root"
    mv "$work/root" "$root"
    echo "sysroot $arch: $(du -sh "$root" | cut -f1) in $root" >&2
}

arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(aarch64 riscv64)
for arch in "${arches[@]}"; do
    case "$arch" in
        aarch64) build_sysroot aarch64 arm64 bookworm python3.11 ;;
        riscv64) build_sysroot riscv64 riscv64 trixie python3.13 ;;
        *) echo "unknown arch $arch (aarch64, riscv64)" >&2; exit 2 ;;
    esac
done
