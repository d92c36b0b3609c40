#!/usr/bin/env bash
# Builds the folder that `benches/gpu.sh` runs from on a machine with an NVIDIA GPU
# and no Rust toolchain: a stripped `alfa` built with `--features cuda` (xz-compressed:
# candle's kernels make it 94 MB, 16 MB compressed), CLIP's tokenizer.json, the CUDA
# 11.8 runtime library the binary links, and gpu.sh. About 21 MB.
#
#   benches/gpu_carry.sh [OUT]      # default OUT: /work/gpu-carry
#
# Needs what tests/cuda_build.sh installs (nvcc 11.8 and g++-11). Environment:
#   CUDA_COMPUTE_CAP      the GPU's compute capability (default 90: H100/H200)
#   CUDARC_CUDA_VERSION   the CUDA API the bindings are for (default 13000: the GPU
#                         machine's cuBLAS/NVRTC are CUDA 13's)
#   TOKENIZER             CLIP's tokenizer.json (default ../shared/clip/tokenizer.json)
#
# Why not the plain `--features cuda` binary: candle enables cudarc's
# `dynamic-linking`, so that binary needs libcublas.so.11 & co. by name, with their
# versioned symbols (`cublasCreate_v2@libcublas.so.11`): CUDA 13's libcublas.so.13
# cannot stand in for them, and CUDA 11.8's cuBLAS is 670 MB. Here cudarc is patched
# (a copy, for this build only) to load the libraries at run time instead
# (`dlopen` by the names cudarc knows: libcublas.so.13, .12, .11, ...), which works
# with whichever CUDA libraries the GPU machine has. The build runs on a copy of the
# working tree (the patch rewrites its Cargo.lock), in the CUDA target dir.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/work/gpu-carry}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}
tokenizer=${TOKENIZER:-../shared/clip/tokenizer.json}
source tests/cuda_env.sh

# The registry copy of cudarc that Cargo.lock pins, patched into the target dir.
version=$(awk '/^name = "cudarc"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$version" | head -1)
patched=$CARGO_TARGET_DIR/cudarc-$version-dynamic-loading
rm -rf "$patched"
cp -r "$registry" "$patched"
sed -i 's|^    dynamic_linking(major, minor);$|    println!("cargo:rustc-cfg=feature=\\"dynamic-loading\\""); // patched: load at run time|' \
    "$patched/build.rs"
grep -q 'patched: load at run time' "$patched/build.rs" || { echo "cudarc $version's build.rs changed: update the patch" >&2; exit 1; }

copy=$CARGO_TARGET_DIR/gpu-carry-src
rm -rf "$copy"
mkdir -p "$copy"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$copy"
(cd "$copy" && cargo build --release --features cuda --bin alfa --config "patch.crates-io.cudarc.path=\"$patched\"")

rm -rf "$out"
mkdir -p "$out/lib"
strip -o "$out/alfa" "$CARGO_TARGET_DIR/release/alfa"
cp "$tokenizer" "$out/tokenizer.json"
cp benches/gpu.sh "$out/gpu.sh"
# The CUDA runtime the candle kernels' static part links (libcudart.so.11.0, 0.7 MB),
# when the binary needs it.
if readelf -d "$out/alfa" | grep -q 'libcudart.so'; then
    cp -L "$(ldconfig -p | awk '/libcudart.so.11.0 .*x86-64/ { print $NF; exit }')" "$out/lib/libcudart.so.11.0"
fi
echo "== $out"
readelf -d "$out/alfa" | grep NEEDED
objdump -T "$out/alfa" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 | sed 's/^/newest glibc symbol: /'
xz -T2 -9 "$out/alfa"
du -sh "$out"/*
du -sh "$out"
