import CBLAS

/// Settings of the BLAS library that the dense and convolution layers run on.
public enum BLAS {
  /// Makes OpenBLAS compute on the calling thread only. The simulator trains many clients at once,
  /// one task per core; OpenBLAS's own thread pool on top of that would oversubscribe the cores
  /// and make small matrix products slower, not faster. Call it once before training starts.
  public static func useOneThread() {
    openblas_set_num_threads(1)
  }
}

/// Row-major single-precision `C = alpha · op(A) · op(B) + beta · C`, with `op(A)` of shape
/// `m × k` and `op(B)` of shape `k × n`; leading dimensions are the row lengths as stored.
@inline(__always)
func sgemm(
  transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
  alpha: Float = 1, _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int,
  beta: Float, _ c: UnsafeMutablePointer<Float>, ldc: Int
) {
  cblas_sgemm(
    CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}
