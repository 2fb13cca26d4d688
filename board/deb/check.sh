#!/usr/bin/env bash
# Checks a package made by build.sh: its control fields, that every file is where the unit and
# the docs say, that the config is a root-only conffile, that the maintainer scripts parse, and
# that the packaged binary runs (under qemu-user when it is for another architecture).
#
#   board/deb/check.sh target/deb/interopd_0.1.0_arm64.deb
set -euo pipefail

deb=${1:?usage: check.sh PACKAGE.deb}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fail() {
    echo "check.sh: $deb: $*" >&2
    exit 1
}

field() { dpkg-deb --field "$deb" "$1"; }
[[ "$(field Package)" == interopd ]] || fail "Package is '$(field Package)'"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
[[ "$(field Version)" == "$version" ]] || fail "Version is '$(field Version)', Cargo.toml says '$version'"
arch=$(field Architecture)
case "$arch" in
    arm64) elf_machine=183 qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu) ;;
    armhf) elf_machine=40 qemu=(qemu-arm -L /usr/arm-linux-gnueabihf) ;;
    amd64) elf_machine=62 qemu=() ;;
    *) fail "unexpected Architecture '$arch'" ;;
esac
[[ "$(field Depends)" == *"libc6 (>= 2.34)"* ]] || fail "Depends lacks the glibc floor"

contents=$(dpkg-deb --contents "$deb")
expect_file() { # MODE OWNER PATH
    grep -qE "^$1 $2 +[0-9]+ [0-9-]+ [0-9:]+ \./$3\$" <<<"$contents" ||
        fail "no $1 $2 ./$3 in:"$'\n'"$contents"
}
expect_file -rwxr-xr-x root/root usr/bin/interopd
expect_file -rw-r--r-- root/root usr/lib/systemd/system/interopd.service
expect_file -rw------- root/root etc/interopd/interopd.conf
expect_file -rw-r--r-- root/root usr/share/doc/interopd/copyright

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb --control "$deb" "$work/DEBIAN"
grep -qx /etc/interopd/interopd.conf "$work/DEBIAN/conffiles" || fail "the config is not a conffile"
for script in postinst prerm postrm; do
    [[ -x "$work/DEBIAN/$script" ]] || fail "no executable $script"
    sh -n "$work/DEBIAN/$script" || fail "$script does not parse"
done

dpkg-deb --extract "$deb" "$work/tree"
bin="$work/tree/usr/bin/interopd"
# e_machine is the 16-bit little-endian field at offset 18 of the ELF header.
machine=$(od -An -t u2 -j 18 -N 2 "$bin" | tr -d ' ')
[[ "$machine" == "$elf_machine" ]] || fail "interopd is for ELF machine $machine, not $elf_machine ($arch)"
if [[ ${#qemu[@]} -gt 0 ]] && ! command -v "${qemu[0]}" >/dev/null; then
    echo "check.sh: ${qemu[0]} not installed: the packaged binary was not run" >&2
else
    out=$("${qemu[@]}" "$bin" --version) || fail "interopd --version failed"
    [[ "$out" == *"$version"* ]] || fail "interopd --version printed '$out'"
    # The shipped example config parses: every key is known and every value in range. It
    # names a CA file that only exists on a configured box, so the error must be that one.
    set +e
    checked=$("${qemu[@]}" "$bin" check-config --config "$work/tree/etc/interopd/interopd.conf" 2>&1)
    code=$?
    set -e
    [[ $code -eq 0 || "$checked" == *gatekeeper-ca.pem* ]] ||
        fail "the packaged example config does not check (exit $code): $checked"
fi
echo "check.sh: $deb: OK ($arch, $(du -k "$deb" | cut -f1) KiB)"
