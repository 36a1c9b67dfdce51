// CUDA kernels of op prototype_update (the public tuned_prototype) and its backward: the masked
// window sums S and dQ in one pass (window_sums, in the accumulation type) and their adjoint
// (window_expand, from coefficients in the accumulation type). The
// contraction with the relation weight runs as ATen GEMMs in csrc/ops.cpp (no weight_contract).
#include "windows.cuh"

namespace sst_fast {

at::Tensor window_sums_cuda(const at::Tensor& x, const at::Tensor& mask, int64_t kernel_size, int64_t dilation) {
  const char* fn = "window_sums";
  check_input(fn, "x", x, 4);
  check_input(fn, "mask", mask, 4);
  const int64_t B = x.size(0), O = x.size(1), H = x.size(2), W = x.size(3), k = kernel_size;
  check_like(fn, "mask", mask, x, {B, 1, H, W});
  check_taps(fn, k, dilation);
  check_plane(fn, H, W);
  c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty({B, O, 2, k, k}, x.options().dtype(at::toOpMathType(x.scalar_type())));
  if (out.numel() == 0) return out;
  if (x.numel() == 0) return out.zero_();  // H*W = 0: empty sums
  launch_window<Window::kSums, true>(fn, x.scalar_type(), x, mask, out, B, O, H, W, k, dilation);
  return out;
}

at::Tensor window_expand_cuda(const at::Tensor& coeffs, const at::Tensor& mask, int64_t dilation) {
  const char* fn = "window_expand";
  check_input(fn, "coeffs", coeffs, 5);
  check_input(fn, "mask", mask, 4);
  const int64_t B = coeffs.size(0), O = coeffs.size(1), k = coeffs.size(4), H = mask.size(2), W = mask.size(3);
  SST_CHECK(fn, coeffs.size(2) == 2 && coeffs.size(3) == k, "coeffs must have shape [B, O, 2, k, k], got ",
            coeffs.sizes());
  SST_CHECK(fn, coeffs.scalar_type() == at::toOpMathType(mask.scalar_type()), "coeffs must have dtype ",
            at::toOpMathType(mask.scalar_type()), " (the accumulation type of the mask's ", mask.scalar_type(),
            "), got ", coeffs.scalar_type());
  SST_CHECK(fn, mask.device() == coeffs.device(), "mask must be on ", coeffs.device(), ", got ", mask.device());
  SST_CHECK(fn, mask.sizes() == c10::IntArrayRef({B, 1, H, W}), "mask must have shape [", B, ", 1, H, W], got ",
            mask.sizes());
  check_taps(fn, k, dilation);
  check_plane(fn, H, W);
  c10::cuda::CUDAGuard device_guard(coeffs.device());
  at::Tensor out = at::empty({B, O, H, W}, mask.options());
  if (out.numel() == 0) return out;
  launch_window<Window::kExpand, true>(fn, mask.scalar_type(), coeffs, mask, out, B, O, H, W, k, dilation);
  return out;
}

}  // namespace sst_fast
