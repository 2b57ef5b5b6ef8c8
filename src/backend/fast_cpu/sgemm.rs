//! The one single-precision matrix product every matmul kernel calls ([`sgemm`]), and the two
//! libraries behind it: the `gemm` crate (the default: AVX-512 kernels on CPUs that have them,
//! picked at run time, AVX2/FMA otherwise) and `matrixmultiply` (AVX2/FMA kernels), chosen once
//! per process by the environment variable `COURSE_SGEMM` (`gemm` or `matrixmultiply`), so an
//! A/B comparison needs one binary.

use std::sync::OnceLock;

/// Which library runs the matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sgemm {
    /// The `gemm` crate (default).
    Gemm,
    /// `matrixmultiply::sgemm` (what the backend used before).
    MatrixMultiply,
}

/// The library this process uses: `COURSE_SGEMM`, read once (unset: [`Sgemm::Gemm`]).
pub fn sgemm_library() -> Sgemm {
    static CHOICE: OnceLock<Sgemm> = OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("COURSE_SGEMM").as_deref() {
        Err(_) | Ok("") | Ok("gemm") => Sgemm::Gemm,
        Ok("matrixmultiply") => Sgemm::MatrixMultiply,
        Ok(other) => panic!("COURSE_SGEMM={other}: expected `gemm` or `matrixmultiply`"),
    })
}

/// One operand of [`sgemm`]: element `(i, j)` of the matrix is at `ptr + i·rs + j·cs` (strides
/// in elements, negative or zero allowed), as `matrixmultiply::sgemm` takes them.
#[derive(Clone, Copy, Debug)]
pub struct Mat<P> {
    /// Element `(0, 0)`.
    pub ptr: P,
    /// Elements from one row to the next.
    pub rs: isize,
    /// Elements from one column to the next.
    pub cs: isize,
}

/// An operand that is read: `A` or `B`.
pub type MatRef = Mat<*const f32>;
/// The operand that is written: `C`.
pub type MatMut = Mat<*mut f32>;

impl<P> Mat<P> {
    /// The matrix at `ptr` with row stride `rs` and column stride `cs`.
    pub fn new(ptr: P, rs: isize, cs: isize) -> Self {
        Self { ptr, rs, cs }
    }
}

/// `C = A B` for an `m × k` matrix `A`, a `k × n` matrix `B` and an `m × n` matrix `C`, each
/// addressed through a row stride and a column stride (in elements, as `matrixmultiply::sgemm`
/// takes them), with the library [`sgemm_library`] chose. `C` is overwritten and never read (it
/// may be uninitialised).
///
/// # Safety
///
/// For every `i < m`, `j < n`, `l < k`: `a.ptr + i·a.rs + l·a.cs` and `b.ptr + l·b.rs + j·b.cs`
/// must be readable and `c.ptr + i·c.rs + j·c.cs` writable, and distinct `(i, j)` must address
/// distinct elements of `C`, which must not overlap `A` or `B`.
pub unsafe fn sgemm(m: usize, k: usize, n: usize, a: MatRef, b: MatRef, c: MatMut) {
    // SAFETY: forwarded: this function's contract is both callees'.
    unsafe {
        match sgemm_library() {
            Sgemm::Gemm => sgemm_gemm(m, k, n, a, b, c),
            Sgemm::MatrixMultiply => sgemm_matrixmultiply(m, k, n, a, b, c),
        }
    }
}

/// [`sgemm`] through `matrixmultiply` (its own threads: `MATMUL_NUM_THREADS`, which
/// [`super::set_threads`] sets).
///
/// # Safety
///
/// As [`sgemm`].
pub unsafe fn sgemm_matrixmultiply(m: usize, k: usize, n: usize, a: MatRef, b: MatRef, c: MatMut) {
    // SAFETY: β = 0: matrixmultiply overwrites C without reading it; the rest is the caller's.
    unsafe {
        matrixmultiply::sgemm(
            m, k, n, 1.0, a.ptr, a.rs, a.cs, b.ptr, b.rs, b.cs, 0.0, c.ptr, c.rs, c.cs,
        )
    }
}

/// [`sgemm`] through the `gemm` crate. One thread when the backend has one (or when called
/// from inside the backend's pool, where the caller already split the work); otherwise the
/// backend's pool, which gemm splits a product over when it is big enough (gemm's threshold:
/// 48·48·256 multiply-adds).
///
/// # Safety
///
/// As [`sgemm`].
pub unsafe fn sgemm_gemm(m: usize, k: usize, n: usize, a: MatRef, b: MatRef, c: MatMut) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                // SAFETY: (i, j) is inside C (the caller's contract).
                unsafe { *c.ptr.offset(i as isize * c.rs + j as isize * c.cs) = 0.0 };
            }
        }
        return;
    }
    let threads = super::threads();
    let product = Product {
        a,
        b,
        c,
        sizes: [m, k, n],
    };
    // Below gemm's threshold it would run on one thread anyway: skip the hop into the pool.
    let small = m.saturating_mul(n).saturating_mul(k) < gemm::get_threading_threshold();
    // SAFETY (both calls): the caller's contract, which `product` carries.
    if threads == 1 || small || rayon::current_thread_index().is_some() {
        unsafe { product.run(gemm::Parallelism::None) };
    } else {
        super::pool().install(|| unsafe { product.run(gemm::Parallelism::Rayon(threads)) });
    }
}

/// One call's operands, to hand to the pool's thread (raw pointers are neither `Send` nor
/// `Sync`; the caller of [`sgemm`] vouched for them, and the call returns before they go).
struct Product {
    a: MatRef,
    b: MatRef,
    c: MatMut,
    sizes: [usize; 3],
}

// SAFETY: see the type: the pointers are used only within the `sgemm` call that made them,
// and gemm's threads write disjoint parts of C.
unsafe impl Send for Product {}
// SAFETY: as for `Send`.
unsafe impl Sync for Product {}

impl Product {
    /// # Safety
    ///
    /// As [`sgemm`], for the operands this holds.
    unsafe fn run(&self, parallelism: gemm::Parallelism) {
        let [m, k, n] = self.sizes;
        let (a, b, c) = (self.a, self.b, self.c);
        // SAFETY: gemm's arguments are (m, n, k, dst, dst column stride, dst row stride,
        // read_dst, lhs, its column and row strides, rhs, its column and row strides, α, β,
        // conjugations, parallelism) and it computes dst = α·dst + β·lhs·rhs: with
        // read_dst = false and β = 1 that is C = A B, C never read; the addresses it forms are
        // the ones the caller vouched for.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.ptr,
                c.cs,
                c.rs,
                false,
                a.ptr,
                a.cs,
                a.rs,
                b.ptr,
                b.cs,
                b.rs,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One operand's layout: row-major or column-major, with `pad` unused elements after each
    /// row (or column), as the call sites' views give them: contiguous weights, transposed
    /// reads (`x^T` in the backward pass), and attention's per-head views, whose rows are
    /// `d_model` apart while a head reads `d_k` of them.
    #[derive(Clone, Copy, Debug)]
    struct Layout {
        transposed: bool,
        pad: usize,
    }

    impl Layout {
        /// (buffer length, row stride, column stride) of an `r × c` matrix.
        fn strides(self, r: usize, c: usize) -> (usize, isize, isize) {
            if self.transposed {
                let ld = r + self.pad;
                (ld * c.max(1), 1, ld as isize)
            } else {
                let ld = c + self.pad;
                (ld * r.max(1), ld as isize, 1)
            }
        }
    }

    fn layout() -> impl Strategy<Value = Layout> {
        (any::<bool>(), prop_oneof![Just(0usize), 1usize..5])
            .prop_map(|(transposed, pad)| Layout { transposed, pad })
    }

    /// Sizes: 1, odd and small (edge tiles of every kernel), and some large enough for gemm to
    /// pack and, with two threads, to split (m·n·k ≥ 48·48·256).
    fn dim() -> impl Strategy<Value = usize> {
        prop_oneof![3 => 1usize..20, 1 => 20usize..300]
    }

    #[derive(Debug)]
    struct Case {
        m: usize,
        k: usize,
        n: usize,
        layouts: [Layout; 3],
        seed: u64,
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            dim(),
            dim(),
            dim(),
            [layout(), layout(), layout()],
            any::<u64>(),
        )
            .prop_map(|(m, k, n, layouts, seed)| Case {
                m,
                k,
                n,
                layouts,
                seed,
            })
    }

    /// C (its buffer, row and column strides) from one library; unused elements of C's buffer
    /// start as NaN, so a write outside the matrix would show.
    fn product(case: &Case, library: Sgemm) -> (Vec<f32>, isize, isize, Vec<f32>) {
        use rand::{Rng, SeedableRng};
        let Case {
            m, k, n, layouts, ..
        } = *case;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(case.seed);
        let (la, rsa, csa) = layouts[0].strides(m, k);
        let (lb, rsb, csb) = layouts[1].strides(k, n);
        let (lc, rsc, csc) = layouts[2].strides(m, n);
        let a: Vec<f32> = (0..la).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..lb).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut c = vec![f32::NAN; lc];
        // SAFETY: the strides are the buffers' own layouts of m × k, k × n and m × n matrices.
        unsafe {
            let f = match library {
                Sgemm::Gemm => sgemm_gemm,
                Sgemm::MatrixMultiply => sgemm_matrixmultiply,
            };
            f(
                m,
                k,
                n,
                Mat::new(a.as_ptr(), rsa, csa),
                Mat::new(b.as_ptr(), rsb, csb),
                Mat::new(c.as_mut_ptr(), rsc, csc),
            );
        }
        // Σ_l |a_il| |b_lj|: the scale of each element's rounding error.
        let mut scale = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                scale[i * n + j] = (0..k)
                    .map(|l| {
                        let x = a[(i as isize * rsa + l as isize * csa) as usize];
                        let y = b[(l as isize * rsb + j as isize * csb) as usize];
                        (x * y).abs()
                    })
                    .sum();
            }
        }
        (c, rsc, csc, scale)
    }

    fn same_product(case: &Case) -> Result<(), TestCaseError> {
        let (g, rsc, csc, scale) = product(case, Sgemm::Gemm);
        let (mm, _, _, _) = product(case, Sgemm::MatrixMultiply);
        let (m, k, n) = (case.m, case.k, case.n);
        // Both libraries add the k products in different orders (blocks, SIMD lanes, FMA).
        // Any order of a k-term dot product is within γ_k Σ|a||b| of the exact value
        // (γ_k = k u / (1 - k u), u = 2^-24; Higham, "Accuracy and Stability of Numerical
        // Algorithms", §3.1), so the two differ by at most twice that. The bound is
        // rigorous; in practice the difference is about √k u Σ|a||b|.
        let u = f32::EPSILON as f64 / 2.0;
        let gamma = k as f64 * u / (1.0 - k as f64 * u);
        for i in 0..m {
            for j in 0..n {
                let at = (i as isize * rsc + j as isize * csc) as usize;
                let (x, y) = (g[at] as f64, mm[at] as f64);
                let tol = 2.0 * gamma * scale[i * n + j] as f64;
                prop_assert!(
                    (x - y).abs() <= tol,
                    "C[{i}, {j}] of {m}x{k}x{n}: gemm {x} vs matrixmultiply {y} (tolerance {tol})"
                );
            }
        }
        // Elements of C's buffer outside the matrix stay untouched (NaN) in both.
        for (at, (x, y)) in g.iter().zip(&mm).enumerate() {
            prop_assert_eq!(x.is_nan(), y.is_nan(), "C's buffer element {}", at);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The gemm crate's product equals matrixmultiply's within the rounding bound, for
        /// random sizes (1, odd, and larger than a kernel's tiles) and random layouts of A, B
        /// and C. Runs with the backend's thread count (the machine's cores unless set), so
        /// the large cases also cover gemm's split over the pool.
        #[test]
        fn gemm_equals_matrixmultiply(case in case()) {
            same_product(&case)?;
        }
    }

    #[test]
    fn empty_inner_dimension_writes_zeros() {
        let mut c = [f32::NAN; 6];
        let a = [0.0f32; 1];
        // SAFETY: k = 0 reads nothing; C is 2 × 3 row-major.
        unsafe {
            sgemm_gemm(
                2,
                0,
                3,
                Mat::new(a.as_ptr(), 0, 1),
                Mat::new(a.as_ptr(), 3, 1),
                Mat::new(c.as_mut_ptr(), 3, 1),
            )
        };
        assert_eq!(c, [0.0; 6]);
    }
}
