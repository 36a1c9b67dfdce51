// CPU kernels of op masked_avg_pool: the pooling and its backward.
#include "common.h"

namespace sst_fast {
namespace {

template <typename T>
std::vector<T> masses(const T* mask, int64_t batch, int64_t pixels, double eps) {
  std::vector<T> mass(batch);
  for (int64_t b = 0; b < batch; ++b) mass[b] = total(mask + b * pixels, pixels) + static_cast<T>(eps);
  return mass;
}

}  // namespace

at::Tensor masked_avg_pool_cpu(const at::Tensor& features, const at::Tensor& mask, double eps) {
  check_cpu("masked_avg_pool_cpu", features);
  if (reduced_precision(features)) {
    return like(masked_avg_pool_cpu(as_float(features), as_float(mask), eps), features);
  }
  const int64_t batch = features.size(0), channels = features.size(1), pixels = features.size(2) * features.size(3);
  auto out = at::empty({batch, channels}, features.options());
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "masked_avg_pool_cpu", [&] {
    const scalar_t* f = features.const_data_ptr<scalar_t>();
    const scalar_t* m = mask.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const auto mass = masses(m, batch, pixels, eps);
    at::parallel_for(0, batch * channels, grain(pixels), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / channels;
        o[row] = dot(f + row * pixels, m + b * pixels, pixels) / mass[b];
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> masked_avg_pool_backward_cpu(
    const at::Tensor& grad, const at::Tensor& features, const at::Tensor& mask, double eps,
    std::array<bool, 2> output_mask) {
  check_cpu("masked_avg_pool_backward_cpu", features);
  if (reduced_precision(features)) {
    auto [d_features, d_mask] =
        masked_avg_pool_backward_cpu(as_float(grad), as_float(features), as_float(mask), eps, output_mask);
    return {like(d_features, features), like(d_mask, features)};
  }
  const int64_t batch = features.size(0), channels = features.size(1), pixels = features.size(2) * features.size(3);
  at::Tensor d_features = output_mask[0] ? at::empty_like(features) : at::Tensor();
  at::Tensor d_mask = output_mask[1] ? at::empty_like(mask) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "masked_avg_pool_backward_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* f = features.const_data_ptr<scalar_t>();
    const scalar_t* m = mask.const_data_ptr<scalar_t>();
    const auto mass = masses(m, batch, pixels, eps);
    if (output_mask[0]) {  // d_features[b, c, p] = g[b, c] m[b, p] / M[b]
      scalar_t* df = d_features.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, batch * channels, grain(pixels), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t b = row / channels;
          scale_into(g[row] / mass[b], m + b * pixels, df + row * pixels, pixels);
        }
      });
    }
    if (output_mask[1]) {
      // acc[b, p] = sum_c g[b, c] f[b, c, p]; then d_mask = (acc - sum_p m acc / M) / M, because
      // sum_c g[b, c] out[b, c] = sum_p m[b, p] acc[b, p] / M[b].
      scalar_t* dm = d_mask.mutable_data_ptr<scalar_t>();
      constexpr int64_t kChunk = 512;
      const int64_t chunks = (pixels + kChunk - 1) / kChunk;
      at::parallel_for(0, batch * chunks, grain(channels * kChunk), [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / chunks, p0 = (task % chunks) * kChunk, n = std::min(kChunk, pixels - p0);
          scalar_t* acc = dm + b * pixels + p0;
          std::fill(acc, acc + n, scalar_t(0));
          for (int64_t c = 0; c < channels; ++c) {
            axpy(g[b * channels + c], f + (b * channels + c) * pixels + p0, acc, n);
          }
        }
      });
      for (int64_t b = 0; b < batch; ++b) {
        scalar_t* acc = dm + b * pixels;
        const scalar_t shift = dot(m + b * pixels, acc, pixels) / mass[b], scale = scalar_t(1) / mass[b];
        for (int64_t p = 0; p < pixels; ++p) acc[p] = (acc[p] - shift) * scale;
      }
    }
  });
  return {d_features, d_mask};
}

}  // namespace sst_fast
