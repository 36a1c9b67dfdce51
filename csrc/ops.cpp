// The sst_fast ops written once on top of a device's Kernels (docs/design.md §3). The dense parts
// (the query convolution, the small GEMMs with the weight) go to ATen: oneDNN/BLAS on the CPU,
// cuDNN/cuBLAS on CUDA; the device kernels do the windowed sums, the tile-window bias and the
// pooling, each in one pass over its feature-sized tensor.
#include "ops.h"

#include <ATen/OpMathType.h>

namespace sst_fast {

void check_float_nchw(const char* op, const char* name, const at::Tensor& t, int64_t ndim) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.dim() == ndim, op, ": ", name, " must have ", ndim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.is_floating_point(), op, ": ", name, " must be a floating-point tensor, got ", t.scalar_type());
}

void check_same(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), ", expected ",
              like.scalar_type(), " like the other inputs");
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), ", expected ", like.device(),
              " like the other inputs");
}

namespace {

void check_mask(const char* op, const at::Tensor& mask, const at::Tensor& features) {
  check_float_nchw(op, "mask", mask, 4);
  check_same(op, "mask", mask, features);
  TORCH_CHECK(mask.size(0) == features.size(0) && mask.size(1) == 1 && mask.size(2) == features.size(2) &&
                  mask.size(3) == features.size(3),
              op, ": mask must be [B, 1, H, W] matching ", features.sizes(), ", got ", mask.sizes());
}

// weight [Co, 2C, k, k] with an odd square kernel; returns k.
int64_t check_weight(const char* op, const at::Tensor& weight, int64_t channels, const at::Tensor& like) {
  check_float_nchw(op, "weight", weight, 4);
  check_same(op, "weight", weight, like);
  TORCH_CHECK(weight.size(1) == 2 * channels, op, ": weight must be [Co, 2C, k, k] with 2C = ", 2 * channels,
              ", got ", weight.sizes());
  TORCH_CHECK(weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1, op,
              ": weight must have a square kernel of odd size, got ", weight.size(2), "x", weight.size(3));
  return weight.size(2);
}

void check_positive(const char* op, const char* name, double value) {
  TORCH_CHECK(std::isfinite(value) && value > 0, op, ": ", name, " must be a finite number > 0, got ", value);
}

void check_dilation(const char* op, int64_t dilation) {
  TORCH_CHECK(dilation >= 1, op, ": dilation must be >= 1, got ", dilation);
}

// One half of the relation weight as a GEMM operand: [Co * k * k, C], row (o, t) = weight[o, half*C:(half+1)*C, t].
at::Tensor weight_by_tap(const at::Tensor& weight, int64_t half) {
  const int64_t out_channels = weight.size(0), channels = weight.size(1) / 2, taps = weight.size(2) * weight.size(3);
  return weight.narrow(1, half * channels, channels)
      .reshape({out_channels, channels, taps})
      .permute({0, 2, 1})
      .reshape({out_channels * taps, channels});
}

// Both halves, [2, Co * k * k, C], in the accumulation type (op prototype_update's GEMMs run in it): index 0 sees
// the query/features (Wq), index 1 the prototype (Wp).
at::Tensor weight_halves_by_tap(const at::Tensor& weight) {
  const int64_t out_channels = weight.size(0), channels = weight.size(1) / 2, taps = weight.size(2) * weight.size(3);
  return weight.reshape({out_channels, 2, channels, taps})
      .permute({1, 0, 3, 2})
      .reshape({2, out_channels * taps, channels})
      .to(at::toOpMathType(weight.scalar_type()));
}

// Per-episode mask statistics of the tuning step: [2, B, 1] = (1 / M, sum(m^2) / M^2), M = sum(m) + eps,
// in the accumulation type (M^2 overflows float16 from M = 256 on).
// Index 0 scales the masked sums (paired with Wq), index 1 the plain tap sums (paired with Wp).
at::Tensor update_scales(const at::Tensor& mask, double eps) {
  const auto flat = mask.flatten(1).to(at::toOpMathType(mask.scalar_type()));
  const auto mass = flat.sum(1) + eps;
  return at::stack({mass.reciprocal(), flat.square().sum(1) / mass.square()}).unsqueeze(-1);
}

// window_sums [B, Co, 2, k, k] (plain, masked) -> [2, B, Co * k * k] (masked, plain), matching
// weight_halves_by_tap's (Wq, Wp) order.
at::Tensor sums_by_half(const at::Tensor& sums) {
  const int64_t batch = sums.size(0);
  return sums.flip(2).permute({2, 0, 1, 3, 4}).reshape({2, batch, -1});
}

// The device kernel tap_expand_add_ (csrc/ops.h) for an output in any layout, from ATen ops that keep it: the
// interior pixels, where every tap reads inside, add the taps' total; each border band adds R taps C^T, where
// R[h, i] = 1 when row tap i reads inside at row h (C likewise for the columns). Computed in the accumulation
// type and added to out once.
void tap_expand_add_strided_(at::Tensor& out, const at::Tensor& taps, int64_t dilation) {
  const int64_t height = out.size(2), width = out.size(3), kernel = taps.size(-1), reach = (kernel / 2) * dilation;
  const auto wide = taps.to(at::toOpMathType(out.scalar_type()));
  const auto shifts = (at::arange(kernel, wide.options()) - kernel / 2).mul(dilation).unsqueeze(0);  // [1, k]
  const auto inside = [&](int64_t begin, int64_t end, int64_t size) {  // [end - begin, k]
    const auto read = at::arange(begin, end, wide.options()).unsqueeze(1) + shifts;
    return at::logical_and(read >= 0, read < size).to(wide.scalar_type());
  };
  const auto band = [&](int64_t h0, int64_t h1, int64_t w0, int64_t w1) {
    if (h0 < h1 && w0 < w1) {
      out.slice(2, h0, h1).slice(3, w0, w1).add_(at::matmul(at::matmul(inside(h0, h1, height), wide),
                                                            inside(w0, w1, width).t()));
    }
  };
  const int64_t top = std::min(reach, height), bottom = std::max(height - reach, top);
  const int64_t left = std::min(reach, width), right = std::max(width - reach, left);
  if (top < bottom && left < right) {
    out.slice(2, top, bottom).slice(3, left, right).add_(wide.sum({2, 3}, /*keepdim=*/true));
  }
  band(0, top, 0, width);
  band(bottom, height, 0, width);
  band(top, bottom, 0, left);
  band(top, bottom, right, width);
}

}  // namespace

at::Tensor masked_avg_pool(const Kernels& k, const at::Tensor& features, const at::Tensor& mask, double eps) {
  const char* op = "sst_fast::masked_avg_pool";
  check_float_nchw(op, "features", features, 4);
  check_mask(op, mask, features);
  check_positive(op, "eps", eps);
  return k.masked_avg_pool(features.contiguous(), mask.contiguous(), eps);
}

std::tuple<at::Tensor, at::Tensor> masked_avg_pool_backward(
    const Kernels& k, const at::Tensor& grad, const at::Tensor& features, const at::Tensor& mask, double eps,
    std::array<bool, 2> output_mask) {
  const char* op = "sst_fast::masked_avg_pool_backward";
  check_float_nchw(op, "features", features, 4);
  check_mask(op, mask, features);
  check_float_nchw(op, "grad", grad, 2);
  check_same(op, "grad", grad, features);
  TORCH_CHECK(grad.size(0) == features.size(0) && grad.size(1) == features.size(1), op,
              ": grad must be [B, C] matching ", features.sizes(), ", got ", grad.sizes());
  check_positive(op, "eps", eps);
  return k.masked_avg_pool_backward(grad.contiguous(), features.contiguous(), mask.contiguous(), eps, output_mask);
}

at::Tensor prototype_conv2d(
    const Kernels& k, const at::Tensor& query, const at::Tensor& proto, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, int64_t dilation) {
  const char* op = "sst_fast::prototype_conv2d";
  check_float_nchw(op, "query", query, 4);
  const int64_t batch = query.size(0), channels = query.size(1);
  check_float_nchw(op, "proto", proto, 2);
  check_same(op, "proto", proto, query);
  TORCH_CHECK(proto.size(0) == batch && proto.size(1) == channels, op, ": proto must be [B, C] matching query ",
              query.sizes(), ", got ", proto.sizes());
  const int64_t kernel = check_weight(op, weight, channels, query);
  const int64_t out_channels = weight.size(0);
  if (bias.has_value() && bias->defined()) {
    check_float_nchw(op, "bias", *bias, 1);
    check_same(op, "bias", *bias, query);
    TORCH_CHECK(bias->size(0) == out_channels, op, ": bias must be [Co] = [", out_channels, "], got ", bias->sizes());
  }
  check_dilation(op, dilation);

  const int64_t padding = dilation * (kernel / 2);
  auto out = at::conv2d(query, weight.narrow(1, 0, channels), bias, {1, 1}, {padding, padding}, {dilation, dilation});
  // Q[b, o, t] = sum_c Wp[o, c, t] p[b, c]: the prototype's contribution of each tap.
  const auto taps = at::mm(proto, weight_by_tap(weight, 1).t()).view({batch, out_channels, kernel, kernel});
  if (out.is_contiguous()) {
    k.tap_expand_add_(out, taps, dilation);
  } else {  // a channels-last convolution output: in place, in its own layout
    tap_expand_add_strided_(out, taps, dilation);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> prototype_conv2d_backward(
    const Kernels& k, const at::Tensor& grad, const at::Tensor& query, const at::Tensor& proto,
    const at::Tensor& weight, int64_t dilation, std::array<bool, 4> output_mask) {
  const char* op = "sst_fast::prototype_conv2d_backward";
  check_float_nchw(op, "query", query, 4);
  const int64_t batch = query.size(0), channels = query.size(1);
  check_float_nchw(op, "proto", proto, 2);
  check_same(op, "proto", proto, query);
  const int64_t kernel = check_weight(op, weight, channels, query);
  const int64_t out_channels = weight.size(0);
  check_float_nchw(op, "grad", grad, 4);
  check_same(op, "grad", grad, query);
  TORCH_CHECK(grad.size(0) == batch && grad.size(1) == out_channels && grad.size(2) == query.size(2) &&
                  grad.size(3) == query.size(3),
              op, ": grad must be [B, Co, H, W] = [", batch, ", ", out_channels, ", ", query.size(2), ", ",
              query.size(3), "], got ", grad.sizes());
  check_dilation(op, dilation);

  const auto [need_query, need_proto, need_weight, need_bias] = output_mask;
  const int64_t padding = dilation * (kernel / 2);
  at::Tensor d_query, d_proto, d_weight, d_bias, d_weight_query;
  if (need_query || need_weight) {
    std::tie(d_query, d_weight_query, std::ignore) = at::convolution_backward(
        grad, query, weight.narrow(1, 0, channels), c10::nullopt, {1, 1}, {padding, padding}, {dilation, dilation},
        false, {0, 0}, 1, {need_query, need_weight, false});
  }
  if (need_proto || need_weight || need_bias) {
    // dQ[b, o, t]: the sum of grad over the pixels where tap t reads inside the image.
    const auto tap_grads = k.tap_sums(grad.contiguous(), kernel, dilation).view({batch, -1});
    if (need_proto) {
      d_proto = at::mm(tap_grads, weight_by_tap(weight, 1));
    }
    if (need_weight) {
      const auto d_weight_proto = at::mm(tap_grads.t(), proto).view({out_channels, kernel * kernel, channels});
      d_weight = at::cat({d_weight_query, d_weight_proto.permute({0, 2, 1}).reshape({out_channels, channels, kernel, kernel})},
                         1);
    }
    if (need_bias) {  // the centre tap reads inside at every pixel: its sum is the bias gradient
      const int64_t centre = (kernel * kernel) / 2;
      d_bias = tap_grads.view({batch, out_channels, kernel * kernel}).select(2, centre).sum(0);
    }
  }
  return {d_query, d_proto, d_weight, d_bias};
}

namespace {

// Checks shared by prototype_update and its backward; returns k.
int64_t check_update_args(const char* op, const at::Tensor& delta, const at::Tensor& mask, const at::Tensor& weight,
                          double eps, int64_t dilation) {
  check_float_nchw(op, "delta", delta, 4);
  check_mask(op, mask, delta);
  check_float_nchw(op, "weight", weight, 4);
  const int64_t kernel = check_weight(op, weight, weight.size(1) / 2, delta);
  TORCH_CHECK(weight.size(0) == delta.size(1), op, ": delta must have Co = weight.size(0) = ", weight.size(0),
              " channels, got ", delta.sizes());
  check_positive(op, "eps", eps);
  check_dilation(op, dilation);
  return kernel;
}

}  // namespace

at::Tensor prototype_update(
    const Kernels& k, const at::Tensor& delta, const at::Tensor& mask, const at::Tensor& weight, double eps,
    int64_t dilation) {
  const int64_t kernel = check_update_args("sst_fast::prototype_update", delta, mask, weight, eps, dilation);
  // u = Wq . S / M + Wp . dQ * sum(m^2) / M^2  (docs/design.md §3, op 3), as one batched GEMM over the two halves,
  // in the accumulation type; the result is rounded to the inputs' dtype once.
  const auto windows = k.window_sums(delta.contiguous(), mask.contiguous(), kernel, dilation);  // [B, Co, 2, k, k]
  const auto scales = update_scales(mask, eps);  // [2, B, 1]
  if (k.weight_contract != nullptr) {  // (plain, masked) pair with (Wp, Wq): swap the scales to match
    const auto by_window = scales.flip(0).permute({1, 0, 2}).reshape({delta.size(0), 1, 2, 1, 1});
    return k.weight_contract((windows * by_window).flip(2).contiguous(), weight.contiguous()).to(delta.scalar_type());
  }
  return at::bmm(sums_by_half(windows) * scales, weight_halves_by_tap(weight)).sum(0).to(delta.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> prototype_update_backward(
    const Kernels& k, const at::Tensor& grad, const at::Tensor& delta, const at::Tensor& mask,
    const at::Tensor& weight, double eps, int64_t dilation, std::array<bool, 2> output_mask) {
  const char* op = "sst_fast::prototype_update_backward";
  const int64_t kernel = check_update_args(op, delta, mask, weight, eps, dilation);
  const int64_t batch = delta.size(0), out_channels = delta.size(1), channels = weight.size(1) / 2;
  check_float_nchw(op, "grad", grad, 2);
  check_same(op, "grad", grad, delta);
  TORCH_CHECK(grad.size(0) == batch && grad.size(1) == channels, op, ": grad must be [B, C] = [", batch, ", ",
              channels, "], got ", grad.sizes());

  // In the accumulation type throughout (csrc/ops.h); each gradient is rounded to the inputs' dtype once.
  const auto scales = update_scales(mask, eps);  // [2, B, 1]
  const auto wide_grad = grad.to(scales.scalar_type());
  const auto contiguous_mask = mask.contiguous();
  at::Tensor d_delta, d_weight;
  if (output_mask[0]) {
    // Coefficients of the windows: (Wq . g / M, Wp . g * sum(m^2) / M^2), back in window_sums' (plain, masked) order.
    const auto coeffs = at::bmm(scales * wide_grad, weight_halves_by_tap(weight).transpose(1, 2));  // [2, B, Co k k]
    const auto by_window =
        coeffs.flip(0).view({2, batch, out_channels, kernel, kernel}).permute({1, 2, 0, 3, 4}).contiguous();
    d_delta = k.window_expand(by_window, contiguous_mask, dilation);
  }
  if (output_mask[1]) {
    const auto sums = sums_by_half(k.window_sums(delta.contiguous(), contiguous_mask, kernel, dilation)) * scales;
    const auto halves = at::bmm(sums.transpose(1, 2), wide_grad.expand({2, batch, channels}));  // [2, Co k k, C]
    d_weight = halves.view({2, out_channels, kernel * kernel, channels})
                   .permute({1, 0, 3, 2})
                   .reshape({out_channels, 2 * channels, kernel, kernel})
                   .to(weight.scalar_type());
  }
  return {d_delta, d_weight};
}

}  // namespace sst_fast
