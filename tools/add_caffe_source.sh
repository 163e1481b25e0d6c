#!/usr/bin/env bash
# Make `apt-get source caffe` work: add a deb-src entry for a suite that carries
# Debian's `caffe` source package, with the mirror this machine already uses.
#
# Debian 12 dropped caffe; Debian 11 (bullseye) still has it. We never write a
# mirror's host name into the repository: the URIs are read from the machine's
# own APT configuration (deb822 *.sources or the one-line sources.list). On
# Ubuntu, caffe is in universe of the machine's own release, so the entry is a
# deb-src twin of the existing one.
set -euo pipefail
OUT=/etc/apt/sources.list.d/irg-caffe-src.sources
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
. /etc/os-release

first_uri() {
  # The first URI of a `deb` entry whose suite is $1 (deb822 or one-line format).
  local suite=$1 f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      /^$/ { if (deb && hit && uri) { print uri; exit } deb = hit = 0; uri = "" }
      /^Types:/ { deb = ($0 ~ /[[:space:]]deb([[:space:]]|$)/) }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) hit = 1 }
      END { if (deb && hit && uri) print uri }' "$f"
  done | head -n1
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '$1 == "deb" {
      for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i+1) == suite) print $i; break } }' "$f"
  done | head -n1
}

uri=$(first_uri "$VERSION_CODENAME" | head -n1)
[ -n "$uri" ] || { echo "add_caffe_source: no APT entry for suite $VERSION_CODENAME found" >&2; exit 1; }
case "$ID" in
  debian) suites="bullseye"; components="main" ;;
  ubuntu) suites="$VERSION_CODENAME"; components="universe" ;;
  *) echo "add_caffe_source: unsupported distribution '$ID'; use --caffe-root" >&2; exit 1 ;;
esac
keyring=/usr/share/keyrings/$ID-archive-keyring.gpg
echo "add_caffe_source: deb-src $uri $suites $components -> $OUT"
$SUDO tee "$OUT" > /dev/null <<EOF
# Added by irg-caffe tools/add_caffe_source.sh: Debian's caffe source package.
Types: deb-src
URIs: $uri
Suites: $suites
Components: $components
Signed-By: $keyring
EOF
