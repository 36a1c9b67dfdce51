// What the CPU kernels of the sst_fast ops share: the declarations of the Kernels members
// (csrc/ops.h) that the <op>_kernel.cpp files define, and their helpers.
//
// Loops run over feature planes with at::parallel_for; inner loops are contiguous and written
// for the compiler to vectorise (omp simd). float and double run natively; half and bfloat16
// are computed in float. The helpers have internal linkage (an unnamed namespace): each kernel
// file compiles its own copy, which keeps the per-CPU clones of the vector loops local to it.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../ops.h"

namespace sst_fast {

// --- the Kernels members, one file per op ---------------------------------------------------
// masked_avg_pool_kernel.cpp
at::Tensor masked_avg_pool_cpu(const at::Tensor& features, const at::Tensor& mask, double eps);
std::tuple<at::Tensor, at::Tensor> masked_avg_pool_backward_cpu(
    const at::Tensor& grad, const at::Tensor& features, const at::Tensor& mask, double eps,
    std::array<bool, 2> output_mask);
// prototype_conv2d_kernel.cpp
void tap_expand_add_cpu_(at::Tensor& out, const at::Tensor& taps, int64_t dilation);
at::Tensor tap_sums_cpu(const at::Tensor& x, int64_t kernel, int64_t dilation);
// prototype_update_kernel.cpp
at::Tensor window_sums_cpu(const at::Tensor& x, const at::Tensor& mask, int64_t kernel, int64_t dilation);
at::Tensor window_expand_cpu(const at::Tensor& coeffs, const at::Tensor& mask, int64_t dilation);
at::Tensor weight_contract_cpu(const at::Tensor& coeffs, const at::Tensor& weight);

namespace {

inline bool reduced_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

inline at::Tensor as_float(const at::Tensor& t) {
  return t.defined() && reduced_precision(t) ? t.to(at::kFloat) : t;
}

inline at::Tensor like(const at::Tensor& t, const at::Tensor& reference) {
  return t.defined() ? t.to(reference.scalar_type()) : t;
}

inline void check_cpu(const char* kernel, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), kernel, ": expected a CPU tensor, got one on ", t.device());
  TORCH_CHECK(t.is_contiguous(), kernel, ": expected a contiguous tensor");
}

// Grain of the plane loops: enough work per task to amortise the scheduling.
inline int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
}

// The pixels where tap i (of k, dilation d) reads inside a side of length n: [begin, end).
struct Range {
  int64_t begin, end;
};

inline Range inside(int64_t tap, int64_t kernel, int64_t dilation, int64_t n) {
  const int64_t offset = (tap - kernel / 2) * dilation;
  const int64_t begin = std::clamp<int64_t>(-offset, 0, n), end = std::clamp<int64_t>(n - offset, 0, n);
  return {begin, std::max(begin, end)};
}

// --- contiguous inner loops (outside the dispatch macros, where pragmas are allowed) ---------
//
// On x86-64 with GCC each loop is also compiled for AVX2 + FMA (x86-64-v3) and the best version
// for the running CPU is picked when the library loads; the package is built where it runs, but
// a built wheel must still run on a CPU without AVX2.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SST_FAST_VECTOR_LOOP __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SST_FAST_VECTOR_LOOP
#endif

template <typename T>
SST_FAST_VECTOR_LOOP T dot(const T* a, const T* b, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t p = 0; p < n; ++p) sum += a[p] * b[p];
  return sum;
}

template <typename T>
SST_FAST_VECTOR_LOOP T total(const T* a, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t p = 0; p < n; ++p) sum += a[p];
  return sum;
}

// y += alpha * x
template <typename T>
SST_FAST_VECTOR_LOOP void axpy(T alpha, const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t p = 0; p < n; ++p) y[p] += alpha * x[p];
}

// y = alpha * x
template <typename T>
SST_FAST_VECTOR_LOOP void scale_into(T alpha, const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t p = 0; p < n; ++p) y[p] = alpha * x[p];
}

// y += x
template <typename T>
SST_FAST_VECTOR_LOOP void add_into(const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t p = 0; p < n; ++p) y[p] += x[p];
}

}  // namespace
}  // namespace sst_fast
