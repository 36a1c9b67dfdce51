// CUDA kernels of op prototype_conv2d: the tile-window bias T of the forward (tap_expand_add_) and
// its adjoint for the backward's dQ (tap_sums); both are window kernels without the mask.
#include "windows.cuh"

namespace sst_fast {

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
  launch_window<Window::kExpand, false>(fn, out.scalar_type(), taps, at::Tensor(), out, B, O, H, W, k, dilation);
}

at::Tensor tap_sums_cuda(const at::Tensor& x, int64_t kernel_size, int64_t dilation) {
  const char* fn = "tap_sums";
  check_input(fn, "x", x, 4);
  const int64_t B = x.size(0), O = x.size(1), H = x.size(2), W = x.size(3), k = kernel_size;
  check_taps(fn, k, dilation);
  check_plane(fn, H, W);
  c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty({B, O, k, k}, x.options());
  if (out.numel() == 0) return out;
  if (x.numel() == 0) return out.zero_();  // H*W = 0: empty sums
  launch_window<Window::kSums, false>(fn, x.scalar_type(), x, at::Tensor(), out, B, O, H, W, k, dilation);
  return out;
}

}  // namespace sst_fast
