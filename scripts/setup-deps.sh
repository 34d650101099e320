#!/usr/bin/env bash
# Installs rlcu's build dependencies from Debian packages (idempotent: installs only what is missing).
# The CUDA toolkit (nvcc, cudart, cuBLAS, cuBLASLt, NCCL) is optional: when it is present (PATH, CUDA_HOME or
# /usr/local/cuda) rlcu builds its CUDA backend too, otherwise a CPU-only rlcu is built.
set -euo pipefail

pkgs=(cmake ninja-build g++ pkg-config libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev libgtest-dev
      libpcre2-dev libutf8proc-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup-deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup-deps: all build dependencies present"
fi

if ! command -v nvcc >/dev/null 2>&1; then
  for d in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [ -n "$d" ] && [ -x "$d/bin/nvcc" ]; then
      echo "setup-deps: nvcc found at $d/bin"
      exit 0
    fi
  done
  echo "setup-deps: no CUDA toolkit (nvcc) found: building the CPU-only rlcu (--device cpu)"
fi
