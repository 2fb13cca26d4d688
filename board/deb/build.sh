#!/usr/bin/env bash
# Builds the Debian package of interopd from binaries already built for TARGET:
#
#   cargo build --release -p interopd --no-default-features --target aarch64-unknown-linux-gnu
#   board/deb/build.sh aarch64-unknown-linux-gnu        # -> target/deb/interopd_<v>_arm64.deb
#
# TARGET is a Rust target triple (default: the host's). DEB_MAINTAINER sets the Maintainer
# field. The package is assembled by hand and
# packed with dpkg-deb, so nothing beyond dpkg is needed; board/README.md lists what goes
# where and why. Run it from anywhere; paths are resolved from the repository root.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
host=$(rustc -vV | sed -n 's/^host: //p')
target=${1:-$host}

case "$target" in
    aarch64-unknown-linux-gnu) arch=arm64 ;;
    armv7-unknown-linux-gnueabihf) arch=armhf ;;
    x86_64-unknown-linux-gnu) arch=amd64 ;;
    *)
        echo "build.sh: no Debian architecture for target '$target'" \
            "(aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf, x86_64-unknown-linux-gnu)" >&2
        exit 2
        ;;
esac

if [[ "$target" == "$host" && ! -x "$root/target/$target/release/interopd" ]]; then
    bin_dir="$root/target/release"
else
    bin_dir="$root/target/$target/release"
fi
for bin in interopd; do
    if [[ ! -x "$bin_dir/$bin" ]]; then
        echo "build.sh: $bin_dir/$bin is missing; first run:" \
            "cargo build --release --locked -p interopd --no-default-features --target $target" >&2
        exit 1
    fi
done

# The package version is the crate's (the first `version =` line, in [package]).
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
if [[ -z "$version" ]]; then
    echo "build.sh: no version in Cargo.toml" >&2
    exit 1
fi

out_dir="$root/target/deb"
stage="$out_dir/stage-$arch"
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"

# install SRC DEST MODE: copy a file into the package tree, creating its directory.
put() {
    install -D -m "$3" "$1" "$stage/$2"
}

put "$bin_dir/interopd" usr/bin/interopd 0755
put "$root/systemd/interopd.service" usr/lib/systemd/system/interopd.service 0644
# The config holds the provider token: root-only from the start.
put "$root/board/examples/interopd.conf" etc/interopd/interopd.conf 0600
put "$root/LICENSE" usr/share/doc/interopd/copyright 0644
put "$root/README.md" usr/share/doc/interopd/README.md 0644
for doc in config.md api.md bounds.md; do
    put "$root/docs/$doc" "usr/share/doc/interopd/$doc" 0644
done
for script in postinst prerm postrm; do
    put "$root/board/deb/$script" "DEBIAN/$script" 0755
done
echo "/etc/interopd/interopd.conf" >"$stage/DEBIAN/conffiles"

# Vendors who ship the package put their own name here (DEB_MAINTAINER="Name <mail>").
maintainer=${DEB_MAINTAINER:-interopd maintainers <maintainers@example.invalid>}
installed_kib=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: interopd
Version: $version
Architecture: $arch
Maintainer: $maintainer
Depends: libc6 (>= 2.34)
Section: net
Priority: optional
Installed-Size: $installed_kib
Description: household end of DMA messaging interoperability
 interopd keeps one persistent TLS link to a messaging gatekeeper, encrypts
 every message with the Signal protocol, hosts its users' media and offers a
 small local HTTP API, so household devices can send and receive text, images,
 voice notes, video and files. This is the appliance build: the reference
 gatekeeper and "interopd demo" are not included.
CONTROL

deb="$out_dir/interopd_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
rm -rf "$stage"
echo "$deb"
