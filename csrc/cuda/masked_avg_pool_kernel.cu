// CUDA kernels of op masked_avg_pool: the pooling and its backward.
#include "common.cuh"

namespace sst_fast {
namespace {

constexpr int kPoolChannels = 4;     // masked_avg_pool: channels per row (one mask load, 4 FMAs)
constexpr int kPoolBackPixels = 32;  // masked_avg_pool_backward: pixels per block (one warp wide)

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

}  // namespace

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

}  // namespace sst_fast
