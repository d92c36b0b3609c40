//! Which vector instructions alfa's CPU kernels (`kernels`, `packed`) are compiled
//! for, chosen once per process from the CPU's features or `ALFA_CPU`.

use super::ClipError;

/// The vector instructions the native CPU kernels use: the widest family this CPU
/// has, or a narrower one named by `ALFA_CPU` (to measure or test the AVX2 kernels on
/// an AVX-512 CPU). One choice per process, like the CPU's features themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuFamily {
    /// AVX-512F: the packed matmul in 6 x 64 tiles (and in bf16 with AVX512-BF16),
    /// activations and softmax in 512-bit vectors.
    Avx512,
    /// AVX2 and FMA: the packed matmul in 6 x 16 tiles (f32 only), 256-bit vectors.
    Avx2,
    /// Neither: the `gemm` crate's matmul, activations and softmax in the build's
    /// baseline vectors (SSE2 on x86-64). `gemm` still picks its own kernel from the
    /// CPU's features (it has no switch).
    Portable,
}

impl CpuFamily {
    /// The environment variable that forces a family.
    pub const ENV: &'static str = "ALFA_CPU";
    /// Widest first.
    pub const ALL: [Self; 3] = [Self::Avx512, Self::Avx2, Self::Portable];

    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "avx512",
            Self::Avx2 => "avx2",
            Self::Portable => "portable",
        }
    }

    /// Whether this CPU has the family's instructions.
    pub fn is_available(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The widest family this CPU has.
    pub fn widest() -> Self {
        Self::ALL.into_iter().find(|f| f.is_available()).unwrap_or(Self::Portable)
    }

    /// The family named `value`, if it is one of `available`.
    fn choose(value: &str, available: &[Self]) -> Result<Self, ClipError> {
        available.iter().copied().find(|f| f.name() == value.trim()).ok_or_else(|| ClipError::CpuFamily {
            value: value.to_owned(),
            available: available.iter().map(|f| format!("`{}`", f.name())).collect::<Vec<_>>().join(", "),
        })
    }

    /// `ALFA_CPU` (the widest family when unset), read once per process; an unknown
    /// family, or one this CPU lacks, is an error naming the choices and the CPU's.
    pub fn from_env() -> Result<Self, ClipError> {
        static CHOICE: std::sync::OnceLock<Result<CpuFamily, String>> = std::sync::OnceLock::new();
        let available = || Self::ALL.into_iter().filter(|f| f.is_available()).collect::<Vec<_>>();
        CHOICE
            .get_or_init(|| match std::env::var(Self::ENV) {
                Err(std::env::VarError::NotPresent) => Ok(Self::widest()),
                Err(std::env::VarError::NotUnicode(v)) => Err(v.to_string_lossy().into_owned()),
                Ok(v) if v.is_empty() => Ok(Self::widest()),
                Ok(v) => Self::choose(&v, &available()).map_err(|_| v),
            })
            .clone()
            .or_else(|value| Self::choose(&value, &available()))
    }

    /// The family the kernels run: `from_env`'s. Where that is an error, models are
    /// refused before any kernel runs (`ClipModel::new`), and whatever still calls a
    /// kernel (unit tests) gets the widest family.
    pub fn active() -> Self {
        Self::from_env().unwrap_or_else(|_| Self::widest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_family_choice_names_the_choices_and_what_the_cpu_has() {
        for family in CpuFamily::ALL {
            assert_eq!(CpuFamily::choose(family.name(), &CpuFamily::ALL).unwrap(), family);
        }
        let avx2_cpu = [CpuFamily::Avx2, CpuFamily::Portable];
        for value in ["avx512", "sse"] {
            let err = CpuFamily::choose(value, &avx2_cpu).unwrap_err().to_string();
            assert!(err.contains(&format!("ALFA_CPU=`{value}`")), "{err}");
            let names_all = CpuFamily::ALL.iter().all(|f| err.contains(&format!("`{}` (", f.name())));
            assert!(names_all && err.contains("this CPU has `avx2`, `portable`"), "{err}");
        }
        assert!(CpuFamily::widest().is_available());
        assert!(CpuFamily::active().is_available());
    }
}
