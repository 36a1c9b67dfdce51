// What the CUDA kernels of the sst_fast ops share: the declarations of the Kernels members
// (csrc/ops.h) that the <op>_kernel.cu files define, the block layout, the row reduction and the
// host-side argument checks.
//
// Only c10/cuda headers are used for the stream and device (not ATen/cuda/CUDAContext.h, which
// pulls in cuBLAS / cuSPARSE / cuSOLVER headers), so that these files compile with a bare CUDA
// toolkit (nvcc + cudart), as the compile check tests/ops/test_cuda_compile.py does.
//
// Layout shared by the kernels that work plane by plane: a block of 256 threads is split into
// rows of `tpr` threads (blockDim.x, a power of two in [32, 256], about H*W / 4), one plane
// (or, in masked_avg_pool, a few channels) per row (threadIdx.y). A row walks the H*W pixels
// with stride tpr, so each warp reads consecutive addresses; per-row sums end in a warp
// shuffle plus a shared-memory step (row_sum). Everything accumulates in
// at::opmath_type<scalar_t> (float for half/bfloat16). In-plane indices are int (planes up to
// 2^29 pixels, checked); plane offsets are int64.
//
// The helpers have internal linkage (an unnamed namespace): each kernel file compiles its own copy.
#pragma once

#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

namespace sst_fast {
namespace {

constexpr int kBlock = 256;  // threads per block, every kernel
constexpr int kWarps = kBlock / 32;
constexpr int64_t kMaxPlane = int64_t{1} << 29;  // H*W: p + (a tap's flat offset) fits int

// Sums v[0..N) over the threads of each row of the block (blockDim.x a power of two >= 32);
// the result is valid in the row's thread 0. Every thread of the block must call it, since it
// may synchronize; `red` holds kWarps * N values and is free again on return.
template <int N, typename T>
__device__ __forceinline__ void row_sum(T (&v)[N], T* red) {
#pragma unroll
  for (int n = 0; n < N; ++n) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v[n] += __shfl_down_sync(0xffffffffu, v[n], offset);
  }
  const int warps = blockDim.x / 32;
  if (warps == 1) return;  // uniform over the block
  T* row = red + threadIdx.y * warps * N;
  if (threadIdx.x % 32 == 0) {
#pragma unroll
    for (int n = 0; n < N; ++n) row[(threadIdx.x / 32) * N + n] = v[n];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < warps; ++w) {
#pragma unroll
      for (int n = 0; n < N; ++n) v[n] += row[w * N + n];
    }
  }
  __syncthreads();
}

// Host side: argument checks, launch configuration

#define SST_CHECK(fn, cond, ...) TORCH_CHECK(cond, "sst_fast: ", fn, " (CUDA): ", __VA_ARGS__)

inline void check_input(const char* fn, const char* name, const at::Tensor& t, int64_t ndim) {
  SST_CHECK(fn, t.defined(), name, " is undefined");
  SST_CHECK(fn, t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  SST_CHECK(fn, t.dim() == ndim, name, " must have ", ndim, " dimensions, got shape ", t.sizes());
  SST_CHECK(fn, t.is_contiguous(), name, " must be contiguous (NCHW), got strides ", t.strides());
}

inline void check_like(const char* fn, const char* name, const at::Tensor& t, const at::Tensor& like,
                c10::IntArrayRef shape) {
  SST_CHECK(fn, t.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type(), ", got ",
            t.scalar_type());
  SST_CHECK(fn, t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
  SST_CHECK(fn, t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

inline void check_plane(const char* fn, int64_t H, int64_t W) {
  SST_CHECK(fn, H * W <= kMaxPlane, "planes of up to 2^29 pixels are supported, got H x W = ", H, " x ", W);
}


// Threads per row for planes of hw pixels: a power of two in [32, kBlock], about hw / 4 (so that
// each thread has a few pixels to sum before the reduction).
inline int threads_per_row(int64_t hw) {
  int t = 32;
  while (t < kBlock && 4 * t < hw) t *= 2;
  return t;
}

}  // namespace
}  // namespace sst_fast
