// File: cuda/testing/blas_shim.cc
//
// The three OpenBLAS entry points the CPU references of the GPU tests call (engine/cpu's Linear, kvcache's
// selection and k-means): cblas_sgemm, cblas_sgemv and openblas_set_num_threads, as plain loops accumulating in
// fp64. GPU test binaries ship to a machine without OpenBLAS (its shared library alone is 36 MB, more than half
// the bundle budget); linking this library (alwayslink) defines the symbols, so -Wl,--as-needed drops
// libopenblas. Only for test references on small sizes: it is slow.
#include <cblas.h>

extern "C" {

void openblas_set_num_threads(int) {}

void cblas_sgemm(const enum CBLAS_ORDER order, const enum CBLAS_TRANSPOSE ta, const enum CBLAS_TRANSPOSE tb,
                 const blasint m, const blasint n, const blasint k, const float alpha, const float* a,
                 const blasint lda, const float* b, const blasint ldb, const float beta, float* c, const blasint ldc) {
  // Column-major C = op(A) op(B) is row-major C^T = op(B)^T op(A)^T: swap the operands.
  if (order == CblasColMajor) {
    cblas_sgemm(CblasRowMajor, tb, ta, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc);
    return;
  }
  const bool at = ta != CblasNoTrans, bt = tb != CblasNoTrans;
  for (blasint i = 0; i < m; ++i) {
    for (blasint j = 0; j < n; ++j) {
      double s = 0;
      for (blasint t = 0; t < k; ++t) {
        const double x = at ? a[t * lda + i] : a[i * lda + t];
        const double y = bt ? b[j * ldb + t] : b[t * ldb + j];
        s += x * y;
      }
      float& out = c[i * ldc + j];
      out = static_cast<float>(alpha * s + (beta == 0.0f ? 0.0 : static_cast<double>(beta) * out));
    }
  }
}

void cblas_sgemv(const enum CBLAS_ORDER order, const enum CBLAS_TRANSPOSE trans, const blasint m, const blasint n,
                 const float alpha, const float* a, const blasint lda, const float* x, const blasint incx,
                 const float beta, float* y, const blasint incy) {
  // Row-major no-trans: y[i] = sum_j a[i][j] x[j]; the other cases swap the roles of the indices.
  const bool rows = (order == CblasRowMajor) == (trans == CblasNoTrans);
  const blasint outs = trans == CblasNoTrans ? m : n, ins = trans == CblasNoTrans ? n : m;
  for (blasint i = 0; i < outs; ++i) {
    double s = 0;
    for (blasint j = 0; j < ins; ++j) s += static_cast<double>(rows ? a[i * lda + j] : a[j * lda + i]) * x[j * incx];
    float& out = y[i * incy];
    out = static_cast<float>(alpha * s + (beta == 0.0f ? 0.0 : static_cast<double>(beta) * out));
  }
}

}  // extern "C"
