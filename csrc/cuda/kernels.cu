// CUDA kernels of the sst_fast ops: the six members of `Kernels` (csrc/ops.h), registered for
// the CUDA dispatch key.
//
// Only c10/cuda headers are used for the stream and device (not ATen/cuda/CUDAContext.h, which
// pulls in cuBLAS / cuSPARSE / cuSOLVER headers), so that this file compiles with a bare CUDA
// toolkit (nvcc + cudart), as the compile check tests/ops/test_cuda_compile.py does.
//
// Layout shared by the kernels that work plane by plane: a block of 256 threads is split into
// rows of `tpr` threads (blockDim.x, a power of two in [32, 256], about H*W / 4), one plane
// (or, in masked_avg_pool, a few channels) per row (threadIdx.y). A row walks the H*W pixels
// with stride tpr, so each warp reads consecutive addresses; per-row sums end in a warp
// shuffle plus a shared-memory step (row_sum). Everything accumulates in
// at::opmath_type<scalar_t> (float for half/bfloat16).
//
// Tap geometry (TapGeom): tap (i, j) of the k x k kernel at pixel (h, w) reads
// (h + (i - r) d, w + (j - r) d). At an interior pixel (at least r*d from every edge) all k*k
// taps are inside, so the "inside" sums collapse to one running total; only border pixels test
// the taps one by one. In-plane indices are int (planes up to 2^29 pixels, checked);
// plane offsets are int64.

#include "../ops.h"

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
constexpr int kMaxKernelSize = 7;
constexpr int64_t kMaxPlane = int64_t{1} << 29;     // H*W: p + (a tap's flat offset) fits int
constexpr int64_t kMaskSmemBytes = 32 * 1024;       // window_*: mask plane cached in shared memory up to this
constexpr int kPoolChannels = 4;                    // masked_avg_pool: channels per row (one mask load, 4 FMAs)
constexpr int kPoolBackPixels = 32;                 // masked_avg_pool_backward: pixels per block (one warp wide)

// ---------------------------------------------------------------------------------------------
// Device helpers

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

// Where the taps of a K x K kernel read in an H x W plane: tap (i, j) at pixel (h, w) reads
// (h + sh[i], w + sw[j]), flat index p + off[i K + j], and is inside iff both coordinates are in
// range. The shifts (i - r) d are clamped to [-H, H] and [-W, W]: a longer shift is outside at
// every pixel, and so is the clamped one. sh[K - 1] = min(r d, H) is the border width.
template <int K>
struct TapGeom {
  int H, W, HW;
  int sh[K], sw[K];
  int off[K * K];
};

template <int K>
__device__ __forceinline__ bool all_taps_inside(const TapGeom<K>& g, int h, int w) {
  return h >= g.sh[K - 1] && h < g.H - g.sh[K - 1] && w >= g.sw[K - 1] && w < g.W - g.sw[K - 1];
}

__device__ __forceinline__ bool in_range(int x, int n) {
  return static_cast<unsigned>(x) < static_cast<unsigned>(n);
}

// Walks the pixels p = threadIdx.x + n blockDim.x of an H x W plane, keeping (h, w) =
// (p / W, p % W) without a division per step.
struct PixelWalk {
  int p, h, w, dh, dw;
  __device__ explicit PixelWalk(int W) : p(threadIdx.x), h(p / W), w(p % W), dh(blockDim.x / W), dw(blockDim.x % W) {}
  __device__ void next(int W) {
    p += blockDim.x;
    h += dh;
    w += dw;
    if (w >= W) {
      w -= W;
      ++h;
    }
  }
};

// Copies mask plane b (HW values) to shared memory as opmath values; all threads must call it.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_mask_plane(acc_t* dst, const scalar_t* __restrict__ src, int HW) {
  for (int p = threadIdx.y * blockDim.x + threadIdx.x; p < HW; p += blockDim.x * blockDim.y) {
    dst[p] = static_cast<acc_t>(src[p]);
  }
  __syncthreads();
}

// The mask plane of batch element b, read from shared memory (kSmem: loaded here by the whole
// block, hence a barrier) or through L1; mval(p) is m[b, p] in the accumulation type.
template <typename scalar_t, bool kSmem>
struct MaskPlane {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* global;
  const acc_t* shared;
  __device__ __forceinline__ acc_t operator()(int p) const {
    if constexpr (kSmem) return shared[p];
    else return static_cast<acc_t>(global[p]);
  }
};

template <typename scalar_t, bool kMask, bool kSmem>
__device__ __forceinline__ MaskPlane<scalar_t, kSmem> mask_plane(const scalar_t* mask, int64_t b, int HW,
                                                                 unsigned char* smem) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* plane = kMask ? mask + b * HW : nullptr;
  acc_t* shared = reinterpret_cast<acc_t*>(smem);
  if constexpr (kSmem) load_mask_plane(shared, plane, HW);
  return {plane, shared};
}

// ---------------------------------------------------------------------------------------------
// masked_avg_pool: out[b, c] = sum_p f[b, c, p] m[b, p] / (sum_p m[b, p] + eps)
//
// One row of threads per (b, group of kPoolChannels channels): each mask value it loads feeds
// kPoolChannels products and the mask mass, so features are read exactly once and the mass costs
// no extra memory traffic (every row recomputes it from the values it loads anyway).

template <typename scalar_t>
__global__ void __launch_bounds__(kBlock) masked_avg_pool_kernel(
    const scalar_t* __restrict__ features, const scalar_t* __restrict__ mask, scalar_t* __restrict__ out,
    int64_t C, int64_t ctiles, int64_t groups, int HW, at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int N = kPoolChannels + 1;  // kPoolChannels dot products, then the mask mass
  __shared__ acc_t red[kWarps * N];

  const int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  int64_t b = 0, c0 = 0;
  int nc = 0;  // channels of this row (0 for a row past the end)
  if (group < groups) {
    b = group / ctiles;
    c0 = (group - b * ctiles) * kPoolChannels;
    nc = static_cast<int>(std::min<int64_t>(kPoolChannels, C - c0));
  }
  const scalar_t* m = mask + b * HW;
  const scalar_t* f = features + (b * C + c0) * HW;

  acc_t v[N] = {};
  if (nc > 0) {
    for (int p = threadIdx.x; p < HW; p += blockDim.x) {
      const acc_t mv = static_cast<acc_t>(m[p]);
      v[kPoolChannels] += mv;
#pragma unroll
      for (int q = 0; q < kPoolChannels; ++q) {
        if (q < nc) v[q] += static_cast<acc_t>(f[q * HW + p]) * mv;
      }
    }
  }
  row_sum(v, red);
  if (threadIdx.x == 0 && nc > 0) {
    const acc_t mass = v[kPoolChannels] + eps;
#pragma unroll
    for (int q = 0; q < kPoolChannels; ++q) {  // constant indices keep v in registers
      if (q < nc) out[b * C + c0 + q] = static_cast<scalar_t>(v[q] / mass);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// masked_avg_pool_backward, M[b] = sum_p m[b, p] + eps:
//   d_features[b, c, p] = g[b, c] m[b, p] / M[b]
//   d_mask[b, p] = (acc[b, p] - G[b]) / M[b],  acc[b, p] = sum_c g[b, c] f[b, c, p],
//                  G[b] = sum_c g[b, c] out[b, c] = sum_p m[b, p] acc[b, p] / M[b]
// Three launches: the masses (mask only), one pass over features / d_features that also
// leaves acc, and a per-b pass over acc that finishes d_mask. Only the middle one touches
// [B, C, H, W] data: features read once (for d_mask), d_features written once.

// One block (kBlock x 1) per b: mass[b] = M[b].
template <typename scalar_t>
__global__ void __launch_bounds__(kBlock) mask_mass_kernel(
    const scalar_t* __restrict__ mask, at::opmath_type<scalar_t>* __restrict__ mass, int HW,
    at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t red[kWarps];
  const scalar_t* m = mask + static_cast<int64_t>(blockIdx.x) * HW;
  acc_t v[1] = {};
  for (int p = threadIdx.x; p < HW; p += blockDim.x) v[0] += static_cast<acc_t>(m[p]);
  row_sum(v, red);
  if (threadIdx.x == 0) mass[blockIdx.x] = v[0] + eps;
}

// Blocks of (32 pixels) x (kWarps channel slices); block x serves b = x / ptiles and pixels
// [32 t, 32 t + 32), t = x % ptiles. Writes d_features if d_features != nullptr and
// acc[b, p] if acc != nullptr (reading features only then).
template <typename scalar_t>
__global__ void __launch_bounds__(kBlock) pool_backward_kernel(
    const scalar_t* __restrict__ grad, const scalar_t* __restrict__ features, const scalar_t* __restrict__ mask,
    const at::opmath_type<scalar_t>* __restrict__ mass, scalar_t* __restrict__ d_features,
    at::opmath_type<scalar_t>* __restrict__ acc, int64_t C, int HW, int ptiles) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t red[kWarps][kPoolBackPixels];
  const int64_t b = blockIdx.x / ptiles;
  const int p = (blockIdx.x % ptiles) * kPoolBackPixels + threadIdx.x;

  acc_t a = 0;
  if (p < HW) {
    const acc_t mv = static_cast<acc_t>(mask[b * HW + p]);
    const acc_t M = mass[b];
    const scalar_t* g = grad + b * C;
    const int64_t base = b * C * HW + p;
#pragma unroll 4
    for (int64_t c = threadIdx.y; c < C; c += blockDim.y) {
      const acc_t gv = static_cast<acc_t>(g[c]);
      if (d_features != nullptr) d_features[base + c * HW] = static_cast<scalar_t>(gv * mv / M);
      if (acc != nullptr) a += gv * static_cast<acc_t>(features[base + c * HW]);
    }
  }
  if (acc == nullptr) return;  // uniform over the grid
  red[threadIdx.y][threadIdx.x] = a;
  __syncthreads();
  if (threadIdx.y == 0 && p < HW) {
    for (int y = 1; y < kWarps; ++y) a += red[y][threadIdx.x];
    acc[b * HW + p] = a;
  }
}

// One block (kBlock x 1) per b: G = sum_p m acc / M, then d_mask = (acc - G) / M.
template <typename scalar_t>
__global__ void __launch_bounds__(kBlock) pool_backward_mask_kernel(
    const scalar_t* __restrict__ mask, const at::opmath_type<scalar_t>* __restrict__ mass,
    const at::opmath_type<scalar_t>* __restrict__ acc, scalar_t* __restrict__ d_mask, int HW) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t red[kWarps];
  __shared__ acc_t pooled;
  const int64_t off = static_cast<int64_t>(blockIdx.x) * HW;
  const acc_t M = mass[blockIdx.x];
  acc_t v[1] = {};
  for (int p = threadIdx.x; p < HW; p += blockDim.x) v[0] += static_cast<acc_t>(mask[off + p]) * acc[off + p];
  row_sum(v, red);
  if (threadIdx.x == 0) pooled = v[0] / M;
  __syncthreads();
  const acc_t G = pooled;
  for (int p = threadIdx.x; p < HW; p += blockDim.x) d_mask[off + p] = static_cast<scalar_t>((acc[off + p] - G) / M);
}

// ---------------------------------------------------------------------------------------------
// The per-plane kernels below run on blocks of (tpr, rows) threads (plane_grid); block x serves
// batch item b = x / chunks and its tiles of `rows` planes chunk, chunk + chunks, ...
// (chunk = x % chunks), so that a block caches the mask plane of b once for several planes.
//
// tap_sums (kMask = false; op prototype_conv2d's backward) and window_sums (kMask = true; op
// prototype_update, the public tuned_prototype) of x [B, O, H, W]:
//   [.., 0, i, j] = sum of x over the pixels where tap (i, j) is inside
//   [.., 1, i, j] = sum_p x[p] m[tap (i, j) of p]   (0 outside)
// One row per plane, one pass over x. Per thread, v holds: v[0] the interior total (every tap
// inside), v[1 + t] the border pixels where tap t is inside, v[1 + KK + t] the masked sums;
// channel 0 of tap t is v[0] + v[1 + t]. The mask plane of b is read from shared memory
// (kSmem) or through L1.

template <typename scalar_t, int K, bool kMask, bool kSmem>
__global__ void __launch_bounds__(kBlock) window_sums_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ mask, scalar_t* __restrict__ out,
    const __grid_constant__ TapGeom<K> g, int64_t O, int64_t ntiles, int chunks) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int KK = K * K;
  constexpr int N = 1 + (kMask ? 2 : 1) * KK;
  __shared__ acc_t red[kWarps * N];
  extern __shared__ __align__(16) unsigned char smem[];

  const int64_t b = blockIdx.x / chunks;
  const int chunk = blockIdx.x % chunks;
  const auto mval = mask_plane<scalar_t, kMask, kSmem>(mask, b, g.HW, smem);

  for (int64_t tile = chunk; tile < ntiles; tile += chunks) {  // uniform over the block
    const int64_t o = tile * blockDim.y + threadIdx.y;
    acc_t v[N] = {};
    if (o < O) {
      const scalar_t* xp = x + (b * O + o) * g.HW;
      for (PixelWalk px(g.W); px.p < g.HW; px.next(g.W)) {
        const acc_t xv = static_cast<acc_t>(xp[px.p]);
        if (all_taps_inside(g, px.h, px.w)) {
          v[0] += xv;
          if constexpr (kMask) {
#pragma unroll
            for (int t = 0; t < KK; ++t) v[1 + KK + t] += xv * mval(px.p + g.off[t]);
          }
        } else {
#pragma unroll
          for (int i = 0; i < K; ++i) {
            const bool row_in = in_range(px.h + g.sh[i], g.H);
#pragma unroll
            for (int j = 0; j < K; ++j) {
              if (row_in && in_range(px.w + g.sw[j], g.W)) {
                v[1 + i * K + j] += xv;
                if constexpr (kMask) v[1 + KK + i * K + j] += xv * mval(px.p + g.off[i * K + j]);
              }
            }
          }
        }
      }
    }
    row_sum(v, red);
    if (threadIdx.x == 0 && o < O) {
      scalar_t* op = out + (b * O + o) * (N - 1);
#pragma unroll
      for (int t = 0; t < KK; ++t) {
        op[t] = static_cast<scalar_t>(v[0] + v[1 + t]);
        if constexpr (kMask) op[KK + t] = static_cast<scalar_t>(v[1 + KK + t]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The adjoints, one coalesced pass over out (op prototype_conv2d's forward; op prototype_update's backward):
//   kMask = false (tap_expand_add_): out[p] += sum_{t inside at p} taps[t]            taps [B, O, K, K]
//   kMask = true  (window_expand):   out[p]  = sum_{t inside at p} c0[t] + c1[t] m[tap t of p]
//                                                                         coeffs [B, O, 2, K, K]
// A thread keeps its plane's coefficients in registers; interior pixels take the precomputed
// sum of all of c0.

template <typename scalar_t, int K, bool kMask, bool kSmem>
__global__ void __launch_bounds__(kBlock) window_expand_kernel(
    const scalar_t* __restrict__ coeffs, const scalar_t* __restrict__ mask, scalar_t* __restrict__ out,
    const __grid_constant__ TapGeom<K> g, int64_t O, int64_t ntiles, int chunks) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int KK = K * K;
  extern __shared__ __align__(16) unsigned char smem[];

  const int64_t b = blockIdx.x / chunks;
  const int chunk = blockIdx.x % chunks;
  const auto mval = mask_plane<scalar_t, kMask, kSmem>(mask, b, g.HW, smem);

  for (int64_t tile = chunk; tile < ntiles; tile += chunks) {
    const int64_t o = tile * blockDim.y + threadIdx.y;
    if (o >= O) continue;  // no synchronization below
    const int64_t plane = b * O + o;
    const scalar_t* cp = coeffs + plane * (kMask ? 2 : 1) * KK;
    acc_t c0[KK], c1[kMask ? KK : 1];
    acc_t total = 0;
#pragma unroll
    for (int t = 0; t < KK; ++t) {
      c0[t] = static_cast<acc_t>(cp[t]);
      total += c0[t];
      if constexpr (kMask) c1[t] = static_cast<acc_t>(cp[KK + t]);
    }
    scalar_t* op = out + plane * g.HW;
    for (PixelWalk px(g.W); px.p < g.HW; px.next(g.W)) {
      acc_t val = 0;
      if (all_taps_inside(g, px.h, px.w)) {
        val = total;
        if constexpr (kMask) {
#pragma unroll
          for (int t = 0; t < KK; ++t) val += c1[t] * mval(px.p + g.off[t]);
        }
      } else {
#pragma unroll
        for (int i = 0; i < K; ++i) {
          const bool row_in = in_range(px.h + g.sh[i], g.H);
#pragma unroll
          for (int j = 0; j < K; ++j) {
            if (row_in && in_range(px.w + g.sw[j], g.W)) {
              val += c0[i * K + j];
              if constexpr (kMask) val += c1[i * K + j] * mval(px.p + g.off[i * K + j]);
            }
          }
        }
      }
      if constexpr (kMask) op[px.p] = static_cast<scalar_t>(val);
      else op[px.p] = static_cast<scalar_t>(static_cast<acc_t>(op[px.p]) + val);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: argument checks, launch configuration

#define SST_CHECK(fn, cond, ...) TORCH_CHECK(cond, "sst_fast: ", fn, " (CUDA): ", __VA_ARGS__)

void check_input(const char* fn, const char* name, const at::Tensor& t, int64_t ndim) {
  SST_CHECK(fn, t.defined(), name, " is undefined");
  SST_CHECK(fn, t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  SST_CHECK(fn, t.dim() == ndim, name, " must have ", ndim, " dimensions, got shape ", t.sizes());
  SST_CHECK(fn, t.is_contiguous(), name, " must be contiguous (NCHW), got strides ", t.strides());
}

void check_like(const char* fn, const char* name, const at::Tensor& t, const at::Tensor& like,
                c10::IntArrayRef shape) {
  SST_CHECK(fn, t.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type(), ", got ",
            t.scalar_type());
  SST_CHECK(fn, t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
  SST_CHECK(fn, t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

void check_plane(const char* fn, int64_t H, int64_t W) {
  SST_CHECK(fn, H * W <= kMaxPlane, "planes of up to 2^29 pixels are supported, got H x W = ", H, " x ", W);
}

void check_taps(const char* fn, int64_t k, int64_t dilation) {
  TORCH_CHECK(k <= kMaxKernelSize, "sst_fast: the CUDA kernels support kernel sizes up to ", kMaxKernelSize,
              ", got ", k);
  SST_CHECK(fn, k >= 1 && k % 2 == 1, "the kernel size must be odd and positive, got ", k);
  SST_CHECK(fn, dilation >= 1, "dilation must be >= 1, got ", dilation);
}

// Calls f(std::integral_constant<int, K>{}) for the checked odd k in [1, kMaxKernelSize].
template <typename F>
void with_kernel_size(int64_t k, F&& f) {
  switch (k) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    default: f(std::integral_constant<int, 7>{}); break;
  }
}

template <int K>
TapGeom<K> make_geom(int64_t H, int64_t W, int64_t dilation) {
  TapGeom<K> g{};
  g.H = static_cast<int>(H);
  g.W = static_cast<int>(W);
  g.HW = static_cast<int>(H * W);
  // Any d >= max(H, W) leaves only the centre tap inside, as d = max(H, W) does.
  const int64_t d = std::min<int64_t>(dilation, std::max<int64_t>({H, W, 1}));
  for (int i = 0; i < K; ++i) {
    const int64_t shift = (i - K / 2) * d;
    g.sh[i] = static_cast<int>(std::clamp<int64_t>(shift, -H, H));
    g.sw[i] = static_cast<int>(std::clamp<int64_t>(shift, -W, W));
  }
  for (int i = 0; i < K; ++i) {
    for (int j = 0; j < K; ++j) g.off[i * K + j] = g.sh[i] * g.W + g.sw[j];  // |.| <= HW + W
  }
  return g;
}

// Threads per row for planes of hw pixels: a power of two in [32, kBlock], about hw / 4 (so that
// each thread has a few pixels to sum before the reduction).
int threads_per_row(int64_t hw) {
  int t = 32;
  while (t < kBlock && 4 * t < hw) t *= 2;
  return t;
}

// Grid of the per-plane kernels for B x O planes of hw pixels: about 4 blocks per SM, each
// serving `chunks`-strided tiles of one batch item's planes.
struct PlaneGrid {
  dim3 grid, block;
  int64_t ntiles;
  int chunks;
};

PlaneGrid plane_grid(const char* fn, int64_t B, int64_t O, int64_t hw) {
  const int tpr = threads_per_row(hw), rows = kBlock / tpr;
  const int64_t ntiles = (O + rows - 1) / rows;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  const int64_t target = 4 * static_cast<int64_t>(sms);
  const int64_t chunks = std::min<int64_t>(ntiles, std::max<int64_t>(1, (target + B - 1) / B));
  SST_CHECK(fn, B * chunks <= INT_MAX, "batch size ", B, " is too large");
  return {dim3(static_cast<unsigned>(B * chunks)), dim3(tpr, rows), ntiles, static_cast<int>(chunks)};
}

template <typename acc_t>
bool mask_fits_smem(int64_t hw) {
  return hw * static_cast<int64_t>(sizeof(acc_t)) <= kMaskSmemBytes;
}

// Calls f(std::bool_constant<kSmem>{}, dynamic shared-memory bytes): kSmem when the mask plane of HW values
// fits in shared memory (the kernel caches it there), else the kernel reads it through L1.
template <typename acc_t, typename F>
void with_mask_cache(int64_t HW, F&& f) {
  if (mask_fits_smem<acc_t>(HW)) {
    f(std::true_type{}, static_cast<size_t>(HW) * sizeof(acc_t));
  } else {
    f(std::false_type{}, size_t{0});
  }
}

// The launch of every per-plane kernel, written once: dispatch on the dtype and the kernel size, then
// launch(scalar_t{}, std::integral_constant<int, K>{}, geometry, stream) and check the launch.
template <typename Launch>
void launch_per_plane(at::ScalarType dtype, int64_t k, int64_t H, int64_t W, int64_t dilation, Launch&& launch) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "sst_fast_per_plane_cuda", [&] {
    with_kernel_size(k, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      launch(scalar_t{}, kc, make_geom<K>(H, W, dilation), c10::cuda::getCurrentCUDAStream());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The Kernels members (which op each serves: csrc/ops.h)

at::Tensor masked_avg_pool_cuda(const at::Tensor& features, const at::Tensor& mask, double eps) {
  const char* fn = "masked_avg_pool";
  check_input(fn, "features", features, 4);
  check_input(fn, "mask", mask, 4);
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  check_like(fn, "mask", mask, features, {B, 1, H, W});
  check_plane(fn, H, W);
  c10::cuda::CUDAGuard device_guard(features.device());
  if (features.numel() == 0) return at::zeros({B, C}, features.options());  // H*W = 0: 0 / eps

  at::Tensor out = at::empty({B, C}, features.options());
  const int64_t HW = H * W;
  const int tpr = threads_per_row(HW), rows = kBlock / tpr;
  const int64_t ctiles = (C + kPoolChannels - 1) / kPoolChannels, groups = B * ctiles;
  const int64_t blocks = (groups + rows - 1) / rows;
  SST_CHECK(fn, blocks <= INT_MAX, "B x C = ", B, " x ", C, " is too large");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "sst_fast_masked_avg_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    masked_avg_pool_kernel<scalar_t><<<static_cast<unsigned>(blocks), dim3(tpr, rows), 0,
                                       c10::cuda::getCurrentCUDAStream()>>>(
        features.const_data_ptr<scalar_t>(), mask.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), C,
        ctiles, groups, static_cast<int>(HW), static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> masked_avg_pool_backward_cuda(
    const at::Tensor& grad, const at::Tensor& features, const at::Tensor& mask, double eps,
    std::array<bool, 2> output_mask) {
  const char* fn = "masked_avg_pool_backward";
  check_input(fn, "features", features, 4);
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2), W = features.size(3);
  check_input(fn, "grad", grad, 2);
  check_like(fn, "grad", grad, features, {B, C});
  check_input(fn, "mask", mask, 4);
  check_like(fn, "mask", mask, features, {B, 1, H, W});
  check_plane(fn, H, W);
  c10::cuda::CUDAGuard device_guard(features.device());

  at::Tensor d_features, d_mask;
  if (output_mask[0]) d_features = at::empty({B, C, H, W}, features.options());
  if (output_mask[1]) d_mask = at::empty({B, 1, H, W}, features.options());
  if (!output_mask[0] && !output_mask[1]) return {d_features, d_mask};
  if (features.numel() == 0) {  // C = 0 leaves d_mask = 0; otherwise both are empty
    if (d_features.defined()) d_features.zero_();
    if (d_mask.defined()) d_mask.zero_();
    return {d_features, d_mask};
  }

  const int64_t HW = H * W;
  const int64_t ptiles = (HW + kPoolBackPixels - 1) / kPoolBackPixels;
  SST_CHECK(fn, B * ptiles <= INT_MAX, "B x H x W = ", B, " x ", H, " x ", W, " is too large");
  const auto acc_options = features.options().dtype(at::toOpMathType(features.scalar_type()));
  at::Tensor mass = at::empty({B}, acc_options);
  at::Tensor acc = output_mask[1] ? at::empty({B, HW}, acc_options) : at::Tensor();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "sst_fast_masked_avg_pool_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* m = mask.const_data_ptr<scalar_t>();
    mask_mass_kernel<scalar_t><<<static_cast<unsigned>(B), kBlock, 0, stream>>>(
        m, mass.mutable_data_ptr<acc_t>(), static_cast<int>(HW), static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pool_backward_kernel<scalar_t><<<static_cast<unsigned>(B * ptiles), dim3(kPoolBackPixels, kWarps), 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), features.const_data_ptr<scalar_t>(), m, mass.const_data_ptr<acc_t>(),
        d_features.defined() ? d_features.mutable_data_ptr<scalar_t>() : nullptr,
        acc.defined() ? acc.mutable_data_ptr<acc_t>() : nullptr, C, static_cast<int>(HW), static_cast<int>(ptiles));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (d_mask.defined()) {
      pool_backward_mask_kernel<scalar_t><<<static_cast<unsigned>(B), kBlock, 0, stream>>>(
          m, mass.const_data_ptr<acc_t>(), acc.const_data_ptr<acc_t>(), d_mask.mutable_data_ptr<scalar_t>(),
          static_cast<int>(HW));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {d_features, d_mask};
}

void tap_expand_add_cuda(at::Tensor& out, const at::Tensor& taps, int64_t dilation) {
  const char* fn = "tap_expand_add_";
  check_input(fn, "out", out, 4);
  check_input(fn, "taps", taps, 4);
  const int64_t B = out.size(0), O = out.size(1), H = out.size(2), W = out.size(3), k = taps.size(3);
  check_like(fn, "taps", taps, out, {B, O, k, k});
  check_taps(fn, k, dilation);
  check_plane(fn, H, W);
  if (out.numel() == 0) return;
  c10::cuda::CUDAGuard device_guard(out.device());

  const PlaneGrid pg = plane_grid(fn, B, O, H * W);
  launch_per_plane(out.scalar_type(), k, H, W, dilation,
                   [&](auto tag, auto kc, const auto& g, cudaStream_t stream) {
    using scalar_t = decltype(tag);
    constexpr int K = decltype(kc)::value;
    window_expand_kernel<scalar_t, K, false, false><<<pg.grid, pg.block, 0, stream>>>(
        taps.const_data_ptr<scalar_t>(), nullptr, out.mutable_data_ptr<scalar_t>(), g, O, pg.ntiles, pg.chunks);
  });
}

// tap_sums and window_sums: mask undefined for tap_sums.
at::Tensor window_sums_impl(const char* fn, const at::Tensor& x, const at::Tensor& mask, int64_t k,
                            int64_t dilation) {
  check_input(fn, "x", x, 4);
  const int64_t B = x.size(0), O = x.size(1), H = x.size(2), W = x.size(3);
  const bool with_mask = mask.defined();
  if (with_mask) {
    check_input(fn, "mask", mask, 4);
    check_like(fn, "mask", mask, x, {B, 1, H, W});
  }
  check_taps(fn, k, dilation);
  check_plane(fn, H, W);
  c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = with_mask ? at::empty({B, O, 2, k, k}, x.options()) : at::empty({B, O, k, k}, x.options());
  if (out.numel() == 0) return out;
  if (x.numel() == 0) return out.zero_();  // H*W = 0: empty sums

  const int64_t HW = H * W;
  const PlaneGrid pg = plane_grid(fn, B, O, HW);
  launch_per_plane(x.scalar_type(), k, H, W, dilation,
                   [&](auto tag, auto kc, const auto& g, cudaStream_t stream) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int K = decltype(kc)::value;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    if (!with_mask) {
      window_sums_kernel<scalar_t, K, false, false><<<pg.grid, pg.block, 0, stream>>>(
          xp, nullptr, op, g, O, pg.ntiles, pg.chunks);
      return;
    }
    with_mask_cache<acc_t>(HW, [&](auto smem, size_t bytes) {
      window_sums_kernel<scalar_t, K, true, decltype(smem)::value><<<pg.grid, pg.block, bytes, stream>>>(
          xp, mask.const_data_ptr<scalar_t>(), op, g, O, pg.ntiles, pg.chunks);
    });
  });
  return out;
}

at::Tensor tap_sums_cuda(const at::Tensor& x, int64_t kernel_size, int64_t dilation) {
  return window_sums_impl("tap_sums", x, at::Tensor(), kernel_size, dilation);
}

at::Tensor window_sums_cuda(const at::Tensor& x, const at::Tensor& mask, int64_t kernel_size, int64_t dilation) {
  const char* fn = "window_sums";
  SST_CHECK(fn, mask.defined(), "mask is undefined");
  return window_sums_impl(fn, x, mask, kernel_size, dilation);
}

at::Tensor window_expand_cuda(const at::Tensor& coeffs, const at::Tensor& mask, int64_t dilation) {
  const char* fn = "window_expand";
  check_input(fn, "coeffs", coeffs, 5);
  check_input(fn, "mask", mask, 4);
  const int64_t B = coeffs.size(0), O = coeffs.size(1), k = coeffs.size(4), H = mask.size(2), W = mask.size(3);
  SST_CHECK(fn, coeffs.size(2) == 2 && coeffs.size(3) == k, "coeffs must have shape [B, O, 2, k, k], got ",
            coeffs.sizes());
  check_like(fn, "mask", mask, coeffs, {B, 1, H, W});
  check_taps(fn, k, dilation);
  check_plane(fn, H, W);
  c10::cuda::CUDAGuard device_guard(coeffs.device());
  at::Tensor out = at::empty({B, O, H, W}, coeffs.options());
  if (out.numel() == 0) return out;

  const int64_t HW = H * W;
  const PlaneGrid pg = plane_grid(fn, B, O, HW);
  launch_per_plane(coeffs.scalar_type(), k, H, W, dilation,
                   [&](auto tag, auto kc, const auto& g, cudaStream_t stream) {
    using scalar_t = decltype(tag);
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int K = decltype(kc)::value;
    const scalar_t* cp = coeffs.const_data_ptr<scalar_t>();
    const scalar_t* mp = mask.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    with_mask_cache<acc_t>(HW, [&](auto smem, size_t bytes) {
      window_expand_kernel<scalar_t, K, true, decltype(smem)::value><<<pg.grid, pg.block, bytes, stream>>>(
          cp, mp, op, g, O, pg.ntiles, pg.chunks);
    });
  });
  return out;
}

#undef SST_CHECK

}  // namespace

extern const Kernels kCudaKernels;
const Kernels kCudaKernels = {
    masked_avg_pool_cuda,           // masked_avg_pool
    masked_avg_pool_backward_cuda,  // masked_avg_pool_backward
    tap_expand_add_cuda,            // tap_expand_add_
    tap_sums_cuda,                  // tap_sums
    window_sums_cuda,               // window_sums
    window_expand_cuda,             // window_expand
};

}  // namespace sst_fast

TORCH_LIBRARY_IMPL(sst_fast, CUDA, m) { sst_fast::register_kernels<sst_fast::kCudaKernels>(m); }
