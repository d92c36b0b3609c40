//! How the process's heap treats the models' activations.
//!
//! Every layer of a forward allocates its output (megabytes: DINOv2's MLP hidden
//! layer is 8.4 MB an image) and frees its input. glibc's malloc serves blocks that
//! large with `mmap` and gives them back with `munmap`; its adaptive threshold does not
//! help when the next request has the same size as the block just freed (still "at
//! least the threshold"). So each layer's output was mapped in again page by page, a
//! page fault per 4 KiB, and the kernel's page-table work took about a tenth of a
//! DINOv2 forward (`perf`). Kept on the heap, the blocks are reused.

/// Blocks up to 32 MiB (glibc's largest mmap threshold) come from the heap, and up to
/// 256 MiB freed at its top stay there for the next layer instead of going back to
/// the system: with one image, peak memory grows by about 50-80 MB (DINOv2 ViT-S/14,
/// measured), which the process keeps while it lives. Call it once, before the models
/// load; other C libraries do nothing here.
pub fn keep_freed_activations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 256 << 20;
        // SAFETY: mallopt only sets malloc's parameters; it is called before any thread
        // that allocates starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}
