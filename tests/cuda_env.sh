# Sourced by tests/cuda_build.sh and benches/gpu_carry.sh: the environment in which
# Debian bookworm's nvcc 11.8 builds candle's CUDA kernels. Expects CUDA_COMPUTE_CAP
# and CARGO_TARGET_DIR set.

# nvcc 11.8 accepts host compilers up to GCC 11; bookworm's default is GCC 12. The
# toolkit package depends on g++-11: point nvcc (through cudaforge, candle's kernel
# builder) at it.
if [ -z "${NVCC_CCBIN:-}" ] && command -v g++-11 >/dev/null 2>&1; then
    export NVCC_CCBIN=g++-11
fi

# cudaforge turns compute capability 90 into `sm_90a`/`compute_90a` (Hopper's
# arch-specific instructions), which nvcc knows from CUDA 12.0 on; CUDA 11.8 knows
# plain sm_90. Below 12, nvcc is called through a wrapper that drops the `a`
# (candle's kernels use no sm_90a-only instruction). cudaforge takes the toolkit's
# root from nvcc's path, so the wrapper sits in a bin/ beside include/ and lib64/
# links to the real ones.
nvcc_major=$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
if [ "${nvcc_major:-0}" -lt 12 ] && [ "${CUDA_COMPUTE_CAP:-0}" -ge 90 ]; then
    real_nvcc=$(command -v nvcc)
    real_root=$(dirname "$(dirname "$(readlink -f "$real_nvcc")")")
    [ -d "$real_root/include" ] || real_root=/usr
    lib64=$real_root/lib64
    [ -d "$lib64" ] || lib64=/usr/lib/x86_64-linux-gnu
    wrapper_root=$CARGO_TARGET_DIR/nvcc-no-arch-suffix
    mkdir -p "$wrapper_root/bin"
    ln -sfn "$real_root/include" "$wrapper_root/include"
    ln -sfn "$lib64" "$wrapper_root/lib64"
    cat > "$wrapper_root/bin/nvcc" <<WRAPPER
#!/usr/bin/env bash
# $real_nvcc without the arch-specific suffix nvcc 11 lacks (tests/cuda_env.sh).
args=()
for a in "\$@"; do
    a=\${a//compute_${CUDA_COMPUTE_CAP}a/compute_${CUDA_COMPUTE_CAP}}
    args+=("\${a//sm_${CUDA_COMPUTE_CAP}a/sm_${CUDA_COMPUTE_CAP}}")
done
exec "$real_nvcc" "\${args[@]}"
WRAPPER
    chmod +x "$wrapper_root/bin/nvcc"
    export NVCC=$wrapper_root/bin/nvcc
    echo "nvcc $nvcc_major has no sm_${CUDA_COMPUTE_CAP}a: building through $NVCC (plain sm_${CUDA_COMPUTE_CAP})"
else
    unset NVCC
fi
echo "NVCC_CCBIN=${NVCC_CCBIN:-<nvcc default>}"
