#!/usr/bin/env bash
# Builds `alfa` with `--features cuda` against Debian bookworm's CUDA 11.8 toolkit
# (`nvidia-cuda-toolkit`, in the archive's `non-free` component). Not part of CI: the
# toolkit is about 2-3 GB installed. Needs root (or sudo) for apt; no GPU is needed,
# the build only compiles and links (candle's kernels are compiled to PTX by nvcc).
#
#   tests/cuda_build.sh            # compute capabilities 80 and 90
#   CAPS="86" tests/cuda_build.sh  # others
#
# Target dir: $CARGO_TARGET_DIR, default target-cuda/ beside the normal one, so that a
# CUDA build does not invalidate (or lock) the CPU build's artefacts.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if ! command -v nvcc >/dev/null 2>&1; then
    # The toolkit is in `non-free`; its libcuda1 dependency (the driver's user-space
    # library, needed to link; no kernel module is installed) needs nvidia-support
    # from `contrib`.
    echo "== enabling bookworm's contrib and non-free components, installing nvidia-cuda-toolkit"
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        # deb822 format (Debian 12 images): add them to every `Components:` line.
        $SUDO sed -i -E '/^Components:/{/ contrib( |$)/! s/$/ contrib/}; /^Components:/{/ non-free( |$)/! s/$/ non-free/}' \
            /etc/apt/sources.list.d/debian.sources
    else
        $SUDO sed -i -E '/^deb .*bookworm/{/ contrib( |$)/! s/$/ contrib/}; /^deb .*bookworm/{/ non-free( |$)/! s/$/ non-free/}' \
            /etc/apt/sources.list
    fi
    $SUDO apt-get update
    # --no-install-recommends: skips nsight-compute/-systems, the visual profiler and the
    # docs (several GB); nvcc, the headers and the libraries are all in the dependencies.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends nvidia-cuda-toolkit
fi
nvcc --version

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-cuda}"
for cap in ${CAPS:-80 90}; do
    export CUDA_COMPUTE_CAP=$cap
    # g++-11 as nvcc's host compiler; at 90, a wrapper for nvcc 11's missing sm_90a.
    source tests/cuda_env.sh
    echo "== cargo build --release --features cuda --bin alfa (CUDA_COMPUTE_CAP=$cap)"
    cargo build --locked --release --features cuda --bin alfa
    bin="$CARGO_TARGET_DIR/release/alfa"
    echo "== built $bin for compute capability $cap; CUDA libraries it links:"
    ldd "$bin" | grep -E 'cu|nvrtc' || true
    # The binary starts (its CUDA libraries resolve) on this machine.
    "$bin" --help >/dev/null
done
echo "== CUDA build OK"
