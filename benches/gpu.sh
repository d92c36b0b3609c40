#!/usr/bin/env bash
# `alfa bench` on an NVIDIA GPU, from the folder benches/gpu_carry.sh builds (the
# stripped binary, tokenizer.json, lib/libcudart.so.11.0 and this script); no Rust
# toolchain or network needed there. Prints the GPU, where each CUDA library was
# found, the detector's per-stage times on the GPU (and, for comparison, on the
# machine's CPU cores), the towers' times, and diagnostics when anything fails.
# About 1 to 3 minutes.
#
#   bash gpu.sh            # CUDA libraries: the driver's libcuda.so.1, and cuBLAS,
#                          # cuRAND, NVRTC from the system or PyTorch's pip packages
#   TORCH_SITE=... bash gpu.sh   # another site-packages with nvidia/*/lib
set -u
here=$(cd "$(dirname "$0")" && pwd)
bin=$here/alfa
if [ ! -x "$bin" ] && [ -f "$here/alfa.xz" ]; then
    bin=$(mktemp -d)/alfa
    xz -dc "$here/alfa.xz" > "$bin" 2>/dev/null ||
        for py in python3 /opt/torch/.venv/bin/python3; do
            "$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
                "$here/alfa.xz" "$bin" && break
        done
    chmod +x "$bin"
fi
tok=$here/tokenizer.json
site=${TORCH_SITE:-/opt/torch/.venv/lib/python3.12/site-packages}
section() { printf '\n==== %s\n' "$*"; }

section "machine"
uname -a
ldd --version 2>&1 | head -1
nproc
nvidia-smi || echo "nvidia-smi failed"

# The binary loads libcuda.so.1 (the driver), libcublas, libcublasLt, libcurand and
# libnvrtc with dlopen, trying libX.so, libX.so.13, .12, .11, .10, ... in the
# loader's path; libcudart.so.11.0 (CUDA 11.8's, shipped in lib/) is linked.
dirs=("$here/lib")
for pattern in "$site"/nvidia/*/lib "$site"/nvidia/cu*/lib /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    for d in $pattern; do
        [ -d "$d" ] && dirs+=("$d")
    done
done
# Anything else that holds a cuBLAS (another venv, a toolkit in /opt).
if ! ls "${dirs[@]}" 2>/dev/null | grep -q '^libcublas\.so'; then
    while read -r f; do dirs+=("$(dirname "$f")"); done < <(timeout 20 find / -xdev -name 'libcublas.so.1[0-9]' 2>/dev/null | head -3)
fi
LD_LIBRARY_PATH=$(IFS=:; echo "${dirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
section "CUDA libraries (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
for lib in libcuda.so libcublas.so libcublasLt.so libcurand.so libnvrtc.so libcudart.so; do
    found=$( (ldconfig -p | awk -v l="$lib" 'index($1, l) == 1 { print $NF }'; \
              for d in "${dirs[@]}"; do ls "$d/$lib"* 2>/dev/null; done) | sort -u | tr '\n' ' ')
    echo "$lib: ${found:-NOT FOUND}"
done
section "ldd alfa"
ldd "$bin"

# run SECONDS ARGS...: one alfa command, cut off after SECONDS (the whole script stays
# under 5 minutes even when something hangs).
run() {
    local limit=$1
    shift
    section "alfa $*"
    local start=$SECONDS
    RUST_BACKTRACE=1 timeout "$limit" "$bin" "$@"
    local rc=$?
    echo "(exit $rc, $((SECONDS - start)) s)"
    return $rc
}

if run 110 bench --engine --device cuda --tokenizer "$tok" --repeats 5 --pixels; then
    run 50 bench --device cuda --repeats 5
    run 40 bench --engine --device cuda --tokenizer "$tok" --repeats 5 --json
else
    section "diagnostics: the CUDA run failed"
    "$bin" --version
    for d in "${dirs[@]}"; do echo "$d:"; ls "$d" 2>/dev/null | grep -E 'cu|nvrtc' | head -20; done
    ls -l /dev/nvidia* 2>&1 | head
    cat /proc/driver/nvidia/version 2>&1 | head -2
    # Where each library dlopen would find (the loader's own search, verbose).
    LD_DEBUG=libs timeout 40 "$bin" bench --device cuda --repeats 1 2>&1 |
        grep -E 'find library=lib(cu|nvrtc)|trying file=.*lib(cuda\.|cublas|curand|nvrtc)|cannot|error' | head -40
fi
# The same detector on this machine's CPU cores, for comparison (same binary).
run 60 bench --engine --device cpu --tokenizer "$tok" --repeats 1
exit 0
