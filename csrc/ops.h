// The sst_fast ops (docs/design.md §3): the device kernels every backend provides, and the
// device-generic op bodies built on them.
//
// Notation: B batch, C channels, O (= Co) relation-conv output channels, H x W a feature map,
// k the (odd) kernel size, r = k / 2, d the dilation. Tap t = (i, j) of the kernel reads the
// input at (h + (i - r) d, w + (j - r) d) when the output pixel is (h, w); a tap "inside" at
// (h, w) reads a pixel of the image, one outside reads the zero padding.
//
// Every kernel takes contiguous NCHW tensors of one floating dtype (float, double, half,
// bfloat16) on one device and accumulates in float (double for double): the accumulation type,
// at::toOpMathType(dtype). The small tensors of op prototype_update's kernels (window_sums' result,
// window_expand's coefficients, weight_contract's coefficients and result) are in the accumulation
// type, so that its float16 and bfloat16 step is computed in float and rounded once.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <tuple>

namespace sst_fast {

// --- device kernels: csrc/cpu/<op>_kernel.cpp and csrc/cuda/<op>_kernel.cu implement each one ---
//
// Which op each primitive serves, and so which file holds it (csrc/cpu/<op>_kernel.cpp,
// csrc/cuda/<op>_kernel.cu; the same names in sst_fast/ops/_triton.py, under a section per op):
//   masked_avg_pool, masked_avg_pool_backward   op masked_avg_pool
//   tap_expand_add_                               op prototype_conv2d (forward: the tile's term T)
//   tap_sums                                      op prototype_conv2d (backward: dQ)
//   window_sums                                   op prototype_update (S and dQ; the public tuned_prototype)
//   window_expand                                 op prototype_update's backward (d delta)
//   weight_contract                               ops prototype_update and its backward (the Wq / Wp contraction)
// The schema's prototype_update is the pooled feature gradient pool(dL/dF, m); the public Python op
// tuned_prototype(delta, mask, weight, proto, step) returns proto - step * prototype_update(...).

struct Kernels {
  // out[b, c] = sum_p f[b, c, p] m[b, p] / (sum_p m[b, p] + eps)
  //   features [B, C, H, W], mask [B, 1, H, W] -> [B, C]
  at::Tensor (*masked_avg_pool)(const at::Tensor& features, const at::Tensor& mask, double eps);

  // The gradients of masked_avg_pool for an upstream grad [B, C], M[b] = sum_p m[b, p] + eps:
  //   d_features[b, c, p] = grad[b, c] m[b, p] / M[b]
  //   d_mask[b, p]       = sum_c grad[b, c] (f[b, c, p] - out[b, c]) / M[b]
  // An output that is not asked for (output_mask) is returned undefined.
  std::tuple<at::Tensor, at::Tensor> (*masked_avg_pool_backward)(
      const at::Tensor& grad, const at::Tensor& features, const at::Tensor& mask, double eps,
      std::array<bool, 2> output_mask);

  // The tile-window bias, added in place: out[b, o, h, w] += sum_{taps t inside at (h, w)} taps[b, o, t]
  //   out [B, O, H, W], taps [B, O, k, k]. Constant in the interior, different only on the
  //   d * r wide border.
  void (*tap_expand_add_)(at::Tensor& out, const at::Tensor& taps, int64_t dilation);

  // Its adjoint: out[b, o, t] = sum_{pixels (h, w) where tap t is inside} x[b, o, h, w]
  //   x [B, O, H, W] -> [B, O, k, k]
  at::Tensor (*tap_sums)(const at::Tensor& x, int64_t kernel_size, int64_t dilation);

  // Shifted masked sums, both kinds in one pass over x:
  //   out[b, o, 0, i, j] = sum_{h, w} x[b, o, h, w] * inside(h + (i - r) d, w + (j - r) d)   (= tap_sums)
  //   out[b, o, 1, i, j] = sum_{h, w} x[b, o, h, w] * m[b, h + (i - r) d, w + (j - r) d]    (0 outside)
  //   x [B, O, H, W], mask [B, 1, H, W] -> [B, O, 2, k, k] in the accumulation type
  at::Tensor (*window_sums)(const at::Tensor& x, const at::Tensor& mask, int64_t kernel_size, int64_t dilation);

  // Its adjoint, a new tensor:
  //   out[b, o, h, w] = sum_{i, j} coeffs[b, o, 0, i, j] * inside(h + (i - r) d, w + (j - r) d)
  //                              + coeffs[b, o, 1, i, j] * m[b, h + (i - r) d, w + (j - r) d]
  //   coeffs [B, O, 2, k, k] in the accumulation type of mask [B, 1, H, W] -> [B, O, H, W] in the mask's dtype
  at::Tensor (*window_expand)(const at::Tensor& coeffs, const at::Tensor& mask, int64_t dilation);

  // Optional (nullptr: the op bodies use ATen GEMMs on a re-laid-out copy of the weight):
  //   out[b, c] = sum_{o, h, i, j} coeffs[b, o, h, i, j] * weight[o, h C + c, i, j]
  //   coeffs [B, O, 2, k, k] in the accumulation type, weight [O, 2C, k, k] -> [B, C] in the accumulation type
  at::Tensor (*weight_contract)(const at::Tensor& coeffs, const at::Tensor& weight) = nullptr;
};

// --- the ops, written once on top of a device's Kernels (csrc/ops.cpp) -----------------------
//
// Schemas (csrc/sst_fast.cpp):
//   masked_avg_pool(Tensor features, Tensor mask, float eps) -> Tensor
//   masked_avg_pool_backward(Tensor grad, Tensor features, Tensor mask, float eps, bool[2] output_mask)
//       -> (Tensor, Tensor)
//   prototype_conv2d(Tensor query, Tensor proto, Tensor weight, Tensor? bias, int dilation) -> Tensor
//   prototype_conv2d_backward(Tensor grad, Tensor query, Tensor proto, Tensor weight, int dilation,
//       bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)       d_query, d_proto, d_weight, d_bias
//   prototype_update(Tensor delta, Tensor mask, Tensor weight, float eps, int dilation) -> Tensor
//   prototype_update_backward(Tensor grad, Tensor delta, Tensor mask, Tensor weight, float eps, int dilation,
//       bool[2] output_mask) -> (Tensor, Tensor)                       d_delta, d_weight
//
// prototype_update(delta, mask, weight) = (p - tuned_prototype(delta, mask, weight, p, step=1)),
// i.e. the pooled feature gradient: the tuned prototype is p - step * prototype_update(...).

at::Tensor masked_avg_pool(const Kernels& k, const at::Tensor& features, const at::Tensor& mask, double eps);

std::tuple<at::Tensor, at::Tensor> masked_avg_pool_backward(
    const Kernels& k, const at::Tensor& grad, const at::Tensor& features, const at::Tensor& mask, double eps,
    std::array<bool, 2> output_mask);

at::Tensor prototype_conv2d(
    const Kernels& k, const at::Tensor& query, const at::Tensor& proto, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, int64_t dilation);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> prototype_conv2d_backward(
    const Kernels& k, const at::Tensor& grad, const at::Tensor& query, const at::Tensor& proto,
    const at::Tensor& weight, int64_t dilation, std::array<bool, 4> output_mask);

at::Tensor prototype_update(
    const Kernels& k, const at::Tensor& delta, const at::Tensor& mask, const at::Tensor& weight, double eps,
    int64_t dilation);

std::tuple<at::Tensor, at::Tensor> prototype_update_backward(
    const Kernels& k, const at::Tensor& grad, const at::Tensor& delta, const at::Tensor& mask,
    const at::Tensor& weight, double eps, int64_t dilation, std::array<bool, 2> output_mask);

// Registers the six ops for a dispatch key, served by the kernels K (a namespace-scope object):
//   extern const Kernels kCpuKernels;  TORCH_LIBRARY_IMPL(sst_fast, CPU, m) { register_kernels<kCpuKernels>(m); }
template <const Kernels& K>
void register_kernels(torch::Library& m) {
  m.impl("masked_avg_pool", [](const at::Tensor& features, const at::Tensor& mask, double eps) {
    return masked_avg_pool(K, features, mask, eps);
  });
  m.impl("masked_avg_pool_backward", [](const at::Tensor& grad, const at::Tensor& features, const at::Tensor& mask,
                                        double eps, std::array<bool, 2> output_mask) {
    return masked_avg_pool_backward(K, grad, features, mask, eps, output_mask);
  });
  m.impl("prototype_conv2d", [](const at::Tensor& query, const at::Tensor& proto, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, int64_t dilation) {
    return prototype_conv2d(K, query, proto, weight, bias, dilation);
  });
  m.impl("prototype_conv2d_backward", [](const at::Tensor& grad, const at::Tensor& query, const at::Tensor& proto,
                                         const at::Tensor& weight, int64_t dilation, std::array<bool, 4> output_mask) {
    return prototype_conv2d_backward(K, grad, query, proto, weight, dilation, output_mask);
  });
  m.impl("prototype_update", [](const at::Tensor& delta, const at::Tensor& mask, const at::Tensor& weight, double eps,
                                int64_t dilation) { return prototype_update(K, delta, mask, weight, eps, dilation); });
  m.impl("prototype_update_backward", [](const at::Tensor& grad, const at::Tensor& delta, const at::Tensor& mask,
                                         const at::Tensor& weight, double eps, int64_t dilation,
                                         std::array<bool, 2> output_mask) {
    return prototype_update_backward(K, grad, delta, mask, weight, eps, dilation, output_mask);
  });
}

// Shared argument checks: a clear message naming the op and the argument.
void check_float_nchw(const char* op, const char* name, const at::Tensor& t, int64_t ndim);
void check_same(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like);

}  // namespace sst_fast
