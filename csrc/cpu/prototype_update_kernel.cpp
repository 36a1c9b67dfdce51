// CPU kernels of op prototype_update (the public tuned_prototype) and its backward: the masked
// window sums and their adjoint, as batched GEMMs against a small matrix of shifted masks
// ([B, 2 k^2, H W]), which BLAS runs at full vector width; the contraction with the relation weight.
#include "common.h"

namespace sst_fast {
namespace {

// [B, 2 k^2, H W]: rows t < k^2 are the in-image indicator of tap t, rows k^2 + t the mask
// shifted by tap t (zero outside).
at::Tensor window_matrix(const at::Tensor& mask, int64_t kernel, int64_t dilation) {
  const int64_t batch = mask.size(0), height = mask.size(2), width = mask.size(3), taps = kernel * kernel;
  auto windows = at::zeros({batch, 2 * taps, height * width}, mask.options());
  AT_DISPATCH_FLOATING_TYPES(mask.scalar_type(), "window_matrix", [&] {
    const scalar_t* m = mask.const_data_ptr<scalar_t>();
    scalar_t* out = windows.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch * taps, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / taps, t = task % taps, i = t / kernel, j = t % kernel;
        const int64_t dy = (i - kernel / 2) * dilation, dx = (j - kernel / 2) * dilation;
        const Range rows = inside(i, kernel, dilation, height), cols = inside(j, kernel, dilation, width);
        scalar_t* plain = out + (b * 2 * taps + t) * height * width;
        scalar_t* masked = plain + taps * height * width;
        const scalar_t* source = m + b * height * width;
        for (int64_t h = rows.begin; h < rows.end; ++h) {
          for (int64_t w = cols.begin; w < cols.end; ++w) {
            plain[h * width + w] = 1;
            masked[h * width + w] = source[(h + dy) * width + w + dx];
          }
        }
      }
    });
  });
  return windows;
}

}  // namespace

at::Tensor window_sums_cpu(const at::Tensor& x, const at::Tensor& mask, int64_t kernel, int64_t dilation) {
  check_cpu("window_sums_cpu", x);
  if (reduced_precision(x)) {  // the sums stay in float (csrc/ops.h)
    return window_sums_cpu(as_float(x), as_float(mask), kernel, dilation);
  }
  const int64_t batch = x.size(0), channels = x.size(1);
  const auto windows = window_matrix(mask, kernel, dilation);
  // windows @ x^T ([B, 2k^2, Co]) runs ~1.6x faster in BLAS than x @ windows^T for these shapes.
  return at::bmm(windows, x.view({batch, channels, -1}).transpose(1, 2))
      .transpose(1, 2)
      .view({batch, channels, 2, kernel, kernel});
}

at::Tensor window_expand_cpu(const at::Tensor& coeffs, const at::Tensor& mask, int64_t dilation) {
  check_cpu("window_expand_cpu", coeffs);
  if (reduced_precision(mask)) {  // float coefficients, the mask's dtype out (csrc/ops.h)
    return like(window_expand_cpu(as_float(coeffs), as_float(mask), dilation), mask);
  }
  const int64_t batch = coeffs.size(0), channels = coeffs.size(1), kernel = coeffs.size(-1);
  const auto windows = window_matrix(mask, kernel, dilation);
  return at::bmm(coeffs.reshape({batch, channels, -1}), windows).view({batch, channels, mask.size(2), mask.size(3)});
}

// --- contraction with the relation weight, without re-laying it out (op prototype_update) -------

namespace {

// acc[c, b] += sum_t w[c, t] coeffs[t, b] for one (o, h) block of the weight: w [n, taps], coeffs [taps, batch].
template <typename T>
SST_FAST_VECTOR_LOOP void contract_block(const T* w, const T* coeffs, T* acc, int64_t n, int64_t taps,
                                         int64_t batch) {
  for (int64_t c = 0; c < n; ++c) {
    T* row = acc + c * batch;
    for (int64_t t = 0; t < taps; ++t) {
      const T weight = w[c * taps + t];
      const T* coefficient = coeffs + t * batch;
#pragma omp simd
      for (int64_t b = 0; b < batch; ++b) row[b] += weight * coefficient[b];
    }
  }
}

}  // namespace

at::Tensor weight_contract_cpu(const at::Tensor& coeffs, const at::Tensor& weight) {
  check_cpu("weight_contract_cpu", weight);
  if (reduced_precision(weight)) {  // in float, and float out (csrc/ops.h)
    return weight_contract_cpu(as_float(coeffs), as_float(weight));
  }
  const int64_t batch = coeffs.size(0), out_channels = weight.size(0), channels = weight.size(1) / 2;
  const int64_t taps = weight.size(2) * weight.size(3);
  // [O, 2, taps, B]: the batch innermost, so each weight element scales one contiguous vector.
  const auto by_tap = coeffs.reshape({batch, out_channels, 2, taps}).permute({1, 2, 3, 0}).contiguous();
  auto out = at::empty({channels, batch}, weight.options());
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "weight_contract_cpu", [&] {
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    const scalar_t* a = by_tap.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    constexpr int64_t kChunk = 32;  // output channels per task: the accumulator stays in L1
    at::parallel_for(0, (channels + kChunk - 1) / kChunk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t c0 = chunk * kChunk, n = std::min(kChunk, channels - c0);
        scalar_t* acc = o + c0 * batch;
        std::fill(acc, acc + n * batch, scalar_t(0));
        for (int64_t oc = 0; oc < out_channels; ++oc) {
          for (int64_t half = 0; half < 2; ++half) {
            contract_block(w + ((oc * 2 + half) * channels + c0) * taps, a + (oc * 2 + half) * taps * batch, acc, n,
                           taps, batch);
          }
        }
      }
    });
  });
  return out.t().contiguous();
}

}  // namespace sst_fast
