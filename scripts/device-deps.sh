#!/usr/bin/env bash
# Fetches the Debian -dev packages that a GPU build machine may lack (PCRE2 and utf8proc headers + static
# archives, and the header-only libraries) into .deps/ (git-ignored) so they can be copied along with the tree.
# Configure there with -DCMAKE_PREFIX_PATH=$PWD/.deps/usr (scripts/gpu-build.sh does).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$root/.deps/debs"
cd "$root/.deps/debs"
pkgs=(libpcre2-dev libutf8proc-dev)
for p in "${pkgs[@]}"; do
  ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download "$p"
done
for f in *.deb; do dpkg -x "$f" "$root/.deps"; done
echo "device-deps: unpacked into $root/.deps"
