//! ALFA's global-to-local projection of the text features (METHOD section 4).
//!
//! For a window with `n` tokens, `V_G` [n, E] are their value features in the global
//! pass and `V_L` [n, E] in the window's own pass. The ridge map
//! `W = argmin |V_G W - V_L|^2 + lambda |W|^2 = (V_G^T V_G + lambda I)^-1 V_G^T V_L`
//! is E x E, but only `F_T W` is needed, so we use the identical dual form
//! `F_T W = (F_T V_G^T) (V_G V_G^T + lambda I)^-1 V_L`: an n x n system (n = 4 or 9
//! tokens) instead of an E x E one (E = 640).

/// Row `i` of a row-major matrix with `e` columns.
fn row(m: &[f32], i: usize, e: usize) -> &[f32] {
    &m[i * e..(i + 1) * e]
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Solves `A X = B` for symmetric positive definite `A` [n, n] (Cholesky), `B` [n, m].
fn solve_spd(a: &[f64], n: usize, b: &mut [f64], m: usize) -> Option<()> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                let d = a[i * n + i] - s;
                if d <= 0.0 {
                    return None;
                }
                l[i * n + i] = d.sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    for c in 0..m {
        // L y = b, then L^T x = y.
        for i in 0..n {
            let s: f64 = (0..i).map(|k| l[i * n + k] * b[k * m + c]).sum();
            b[i * m + c] = (b[i * m + c] - s) / l[i * n + i];
        }
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|k| l[k * n + i] * b[k * m + c]).sum();
            b[i * m + c] = (b[i * m + c] - s) / l[i * n + i];
        }
    }
    Some(())
}

/// `F_T W` for text features `text` [t, E], `global` = V_G [n, E], `local` = V_L [n, E],
/// all row-major. Returns [t, E] (not normalised). `lambda` must be positive. `None`
/// when `V_G V_G^T + lambda I` is not positive definite in f64: with lambda > 0 that
/// takes features so large that lambda is lost beside them (squared norms beyond 1e15),
/// as weights gone wrong would give; the caller says so instead of panicking.
pub fn project_text(text: &[f32], global: &[f32], local: &[f32], e: usize, lambda: f32) -> Option<Vec<f32>> {
    assert!(lambda > 0.0, "ridge lambda must be positive");
    let t = text.len() / e;
    let n = global.len() / e;
    assert_eq!(local.len(), n * e, "V_G and V_L have the same shape");
    // K = V_G V_G^T + lambda I  [n, n]
    let mut gram = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let v = dot(row(global, i, e), row(global, j, e));
            gram[i * n + j] = v;
            gram[j * n + i] = v;
        }
        gram[i * n + i] += lambda as f64;
    }
    // Y^T = K^-1 (V_G F_T^T)  [n, t]  (K is symmetric, so Y = (F_T V_G^T) K^-1).
    let mut y = vec![0f64; n * t];
    for i in 0..n {
        for j in 0..t {
            y[i * t + j] = dot(row(global, i, e), row(text, j, e));
        }
    }
    solve_spd(&gram, n, &mut y, t)?;
    // F_T W = Y V_L  [t, E]
    let mut out = vec![0f32; t * e];
    for j in 0..t {
        for i in 0..n {
            let coef = y[i * t + j];
            for (o, v) in out[j * e..(j + 1) * e].iter_mut().zip(row(local, i, e)) {
                *o += (coef * *v as f64) as f32;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The primal closed form with an E x E solve, by Gaussian elimination.
    fn primal(text: &[f32], global: &[f32], local: &[f32], e: usize, lambda: f64) -> Vec<f32> {
        let n = global.len() / e;
        let t = text.len() / e;
        // A = V_G^T V_G + lambda I [e, e], B = V_G^T V_L [e, e]
        let mut a = vec![0f64; e * e];
        let mut b = vec![0f64; e * e];
        for r in 0..e {
            for c in 0..e {
                for k in 0..n {
                    a[r * e + c] += global[k * e + r] as f64 * global[k * e + c] as f64;
                    b[r * e + c] += global[k * e + r] as f64 * local[k * e + c] as f64;
                }
            }
            a[r * e + r] += lambda;
        }
        solve_spd(&a, e, &mut b, e).unwrap(); // b = W
        (0..t)
            .flat_map(|j| {
                let b = &b;
                (0..e).map(move |c| (0..e).map(|r| text[j * e + r] as f64 * b[r * e + c]).sum::<f64>() as f32)
            })
            .collect()
    }

    fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(40_503));
                (x % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn dual_form_equals_the_closed_form() {
        let (e, n, t) = (7, 4, 2);
        let text = pseudo_random(t * e, 1);
        let global = pseudo_random(n * e, 2);
        let local = pseudo_random(n * e, 3);
        for lambda in [0.01f32, 0.1, 1.0, 10.0] {
            let dual = project_text(&text, &global, &local, e, lambda).unwrap();
            let closed = primal(&text, &global, &local, e, lambda as f64);
            for (d, c) in dual.iter().zip(&closed) {
                assert!((d - c).abs() < 1e-4, "lambda {lambda}: {d} vs {c}");
            }
        }
    }

    #[test]
    fn identical_passes_with_small_lambda_recover_the_text_within_the_span() {
        // If V_L = V_G, F_T W is the projection of F_T onto the row space of V_G.
        let e = 3;
        let global = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let text = vec![0.3, -0.4, 0.8];
        let out = project_text(&text, &global, &global, e, 1e-6).unwrap();
        assert!((out[0] - 0.3).abs() < 1e-4 && (out[1] + 0.4).abs() < 1e-4 && out[2].abs() < 1e-4, "{out:?}");
    }

    #[test]
    fn a_system_lambda_cannot_reach_is_refused_not_solved() {
        // Two identical tokens with huge features: V_G V_G^T is singular and lambda
        // (0.1) vanishes beside its entries (1e24 in f64), so the Cholesky pivot is 0.
        let e = 4;
        let global = vec![1e12f32; 2 * e];
        let text = vec![1.0f32; e];
        assert!(project_text(&text, &global, &global, e, 0.1).is_none());
        // The same tokens at a CLIP's scale are solved.
        let global = vec![3.0f32; 2 * e];
        assert!(project_text(&text, &global, &global, e, 0.1).is_some());
    }
}
