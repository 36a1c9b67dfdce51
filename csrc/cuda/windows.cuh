// The per-plane window kernels and their launch, shared by two ops:
//   window_sums_kernel   kMask = false: tap_sums (op prototype_conv2d's backward, dQ)
//                        kMask = true:  window_sums (op prototype_update, the public tuned_prototype)
//   window_expand_kernel kMask = false: tap_expand_add_ (op prototype_conv2d's forward, the tile's T)
//                        kMask = true:  window_expand (op prototype_update's backward, d delta)
//
// Tap geometry (TapGeom): tap (i, j) of the k x k kernel at pixel (h, w) reads
// (h + (i - r) d, w + (j - r) d). At an interior pixel (at least r*d from every edge) all k*k
// taps are inside, so the "inside" sums collapse to one running total; only border pixels test
// the taps one by one.
#pragma once

#include "common.cuh"

namespace sst_fast {
namespace {

constexpr int kMaxKernelSize = 7;
constexpr int64_t kMaskSmemBytes = 32 * 1024;  // mask plane cached in shared memory up to this

// The type of the small [B, O, (2,) K, K] tensor of a window kernel: the accumulation type for the masked
// kernels (op prototype_update, whose sums go on to the contraction with the weight in float; csrc/ops.h), the
// data type for the tap kernels of op prototype_conv2d.
template <typename scalar_t, bool kMask>
using window_t = std::conditional_t<kMask, at::opmath_type<scalar_t>, scalar_t>;

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

// Calls f(t) for every tap t = i K + j that reads inside the plane at pixel (h, w): the border
// pixels' test, tap by tap (unrolled, so each call is inlined into straight-line code).
template <int K, typename F>
__device__ __forceinline__ void for_taps_inside(const TapGeom<K>& g, int h, int w, F&& f) {
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const bool row_in = in_range(h + g.sh[i], g.H);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      if (row_in && in_range(w + g.sw[j], g.W)) f(i * K + j);
    }
  }
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
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ mask, window_t<scalar_t, kMask>* __restrict__ out,
    const __grid_constant__ TapGeom<K> g, int64_t O, int64_t ntiles, int chunks) {
  using acc_t = at::opmath_type<scalar_t>;
  using out_t = window_t<scalar_t, kMask>;
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
          for_taps_inside(g, px.h, px.w, [&](int t) {
            v[1 + t] += xv;
            if constexpr (kMask) v[1 + KK + t] += xv * mval(px.p + g.off[t]);
          });
        }
      }
    }
    row_sum(v, red);
    if (threadIdx.x == 0 && o < O) {
      out_t* op = out + (b * O + o) * (N - 1);
#pragma unroll
      for (int t = 0; t < KK; ++t) {
        op[t] = static_cast<out_t>(v[0] + v[1 + t]);
        if constexpr (kMask) op[KK + t] = static_cast<out_t>(v[1 + KK + t]);
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
    const window_t<scalar_t, kMask>* __restrict__ coeffs, const scalar_t* __restrict__ mask, scalar_t* __restrict__ out,
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
    const window_t<scalar_t, kMask>* cp = coeffs + plane * (kMask ? 2 : 1) * KK;
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
        for_taps_inside(g, px.h, px.w, [&](int t) {
          val += c0[t];
          if constexpr (kMask) val += c1[t] * mval(px.p + g.off[t]);
        });
      }
      if constexpr (kMask) op[px.p] = static_cast<scalar_t>(val);
      else op[px.p] = static_cast<scalar_t>(static_cast<acc_t>(op[px.p]) + val);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: the launch

inline void check_taps(const char* fn, int64_t k, int64_t dilation) {
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

// Grid of the per-plane kernels for B x O planes of hw pixels: about 4 blocks per SM, each
// serving `chunks`-strided tiles of one batch item's planes.
struct PlaneGrid {
  dim3 grid, block;
  int64_t ntiles;
  int chunks;
};

inline PlaneGrid plane_grid(const char* fn, int64_t B, int64_t O, int64_t hw) {
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
inline bool mask_fits_smem(int64_t hw) {
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

// Which kernel launch_window runs.
enum class Window { kSums, kExpand };

template <Window kWindow, typename scalar_t, int K, bool kMask, bool kSmem>
void launch_window_kernel(const PlaneGrid& pg, size_t smem_bytes, cudaStream_t stream, const void* in,
                          const scalar_t* mask, void* out, const TapGeom<K>& g, int64_t O) {
  using small_t = window_t<scalar_t, kMask>;
  if constexpr (kWindow == Window::kSums) {
    window_sums_kernel<scalar_t, K, kMask, kSmem><<<pg.grid, pg.block, smem_bytes, stream>>>(
        static_cast<const scalar_t*>(in), mask, static_cast<small_t*>(out), g, O, pg.ntiles, pg.chunks);
  } else {
    window_expand_kernel<scalar_t, K, kMask, kSmem><<<pg.grid, pg.block, smem_bytes, stream>>>(
        static_cast<const small_t*>(in), mask, static_cast<scalar_t*>(out), g, O, pg.ntiles, pg.chunks);
  }
}

// Every launch of the window kernels, written once: kWindow over the B x O planes of H x W pixels,
// reading `in` and writing `out` as that kernel does, with the mask [B, 1, H, W] (kMask) or
// without it. The feature-sized tensor (`in` of kSums, `out` of kExpand) has the data type `dtype`, the
// small one window_t. Dispatches on the dtype, the kernel size k and whether the mask plane fits in shared
// memory, then checks the launch. kMask is fixed per caller, so each file compiles only the variants it runs.
template <Window kWindow, bool kMask>
void launch_window(const char* fn, at::ScalarType dtype, const at::Tensor& in, const at::Tensor& mask,
                   at::Tensor& out, int64_t B, int64_t O, int64_t H, int64_t W, int64_t k, int64_t dilation) {
  const int64_t HW = H * W;
  const PlaneGrid pg = plane_grid(fn, B, O, HW);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "sst_fast_window_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_kernel_size(k, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      const TapGeom<K> g = make_geom<K>(H, W, dilation);
      const auto stream = c10::cuda::getCurrentCUDAStream();
      const void* ip = in.const_data_ptr();
      void* op = out.mutable_data_ptr();
      if constexpr (!kMask) {
        launch_window_kernel<kWindow, scalar_t, K, false, false>(pg, 0, stream, ip, nullptr, op, g, O);
      } else {
        with_mask_cache<acc_t>(HW, [&](auto smem, size_t bytes) {
          launch_window_kernel<kWindow, scalar_t, K, true, decltype(smem)::value>(
              pg, bytes, stream, ip, mask.const_data_ptr<scalar_t>(), op, g, O);
        });
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace
}  // namespace sst_fast
