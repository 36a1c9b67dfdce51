// CPU kernels of the sst_fast ops (the Kernels contract of csrc/ops.h).
//
// Loops run over feature planes with at::parallel_for; inner loops are contiguous and written
// for the compiler to vectorise (omp simd). The masked window sums and their adjoint are a
// batched GEMM against a small matrix of shifted masks ([B, 2 k^2, H W]), which BLAS runs at
// full vector width. float and double run natively; half and bfloat16 are computed in float.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../ops.h"

namespace sst_fast {
namespace {

bool reduced_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

at::Tensor as_float(const at::Tensor& t) {
  return t.defined() && reduced_precision(t) ? t.to(at::kFloat) : t;
}

at::Tensor like(const at::Tensor& t, const at::Tensor& reference) {
  return t.defined() ? t.to(reference.scalar_type()) : t;
}

void check_cpu(const char* kernel, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), kernel, ": expected a CPU tensor, got one on ", t.device());
  TORCH_CHECK(t.is_contiguous(), kernel, ": expected a contiguous tensor");
}

// Grain of the plane loops: enough work per task to amortise the scheduling.
int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
}

// The pixels where tap i (of k, dilation d) reads inside a side of length n: [begin, end).
struct Range {
  int64_t begin, end;
};

Range inside(int64_t tap, int64_t kernel, int64_t dilation, int64_t n) {
  const int64_t offset = (tap - kernel / 2) * dilation;
  const int64_t begin = std::clamp<int64_t>(-offset, 0, n), end = std::clamp<int64_t>(n - offset, 0, n);
  return {begin, std::max(begin, end)};
}

// --- contiguous inner loops (outside the dispatch macros, where pragmas are allowed) ---------
//
// On x86-64 with GCC each loop is also compiled for AVX2 + FMA (x86-64-v3) and the best version
// for the running CPU is picked when the library loads; the package is built where it runs, but
// a built wheel must still run on a CPU without AVX2.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SST_FAST_VECTOR_LOOP __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SST_FAST_VECTOR_LOOP
#endif

template <typename T>
SST_FAST_VECTOR_LOOP T dot(const T* a, const T* b, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t p = 0; p < n; ++p) sum += a[p] * b[p];
  return sum;
}

template <typename T>
SST_FAST_VECTOR_LOOP T total(const T* a, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t p = 0; p < n; ++p) sum += a[p];
  return sum;
}

// y += alpha * x
template <typename T>
SST_FAST_VECTOR_LOOP void axpy(T alpha, const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t p = 0; p < n; ++p) y[p] += alpha * x[p];
}

// y = alpha * x
template <typename T>
SST_FAST_VECTOR_LOOP void scale_into(T alpha, const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t p = 0; p < n; ++p) y[p] = alpha * x[p];
}

// y += x
template <typename T>
SST_FAST_VECTOR_LOOP void add_into(const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t p = 0; p < n; ++p) y[p] += x[p];
}

// --- masked average pooling -----------------------------------------------------------------

template <typename T>
std::vector<T> masses(const T* mask, int64_t batch, int64_t pixels, double eps) {
  std::vector<T> mass(batch);
  for (int64_t b = 0; b < batch; ++b) mass[b] = total(mask + b * pixels, pixels) + static_cast<T>(eps);
  return mass;
}

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

// --- the tile-window bias and its adjoint (op prototype_conv2d: forward T, backward dQ) ------
//
// Along a side of length n, the k tap ranges cut [0, n) into at most 2k + 1 bands of pixels that
// see the same set of taps. Both kernels work band by band, so each pixel is touched once and no
// sum is formed by cancellation.

struct Bands {
  std::vector<int64_t> edges;  // sorted band boundaries, edges.front() = 0, edges.back() = n

  Bands(int64_t kernel, int64_t dilation, int64_t n) {
    edges = {0, n};
    for (int64_t t = 0; t < kernel; ++t) {
      const Range r = inside(t, kernel, dilation, n);
      edges.push_back(r.begin);
      edges.push_back(r.end);
    }
    std::sort(edges.begin(), edges.end());
    edges.erase(std::unique(edges.begin(), edges.end()), edges.end());
  }
  int64_t count() const { return static_cast<int64_t>(edges.size()) - 1; }
};

// out[h, w] += sum_{taps (i, j) inside at (h, w)} taps[i, j], one plane.
template <typename T>
void tap_expand_add_plane(T* out, const T* taps, int64_t kernel, int64_t dilation, int64_t height, int64_t width,
                          const Bands& rows, std::vector<T>& by_row, std::vector<T>& line) {
  // by_row[i, w] = sum of taps[i, j] over the j inside at column w.
  std::fill(by_row.begin(), by_row.end(), T(0));
  for (int64_t i = 0; i < kernel; ++i) {
    for (int64_t j = 0; j < kernel; ++j) {
      const Range cols = inside(j, kernel, dilation, width);
      const T value = taps[i * kernel + j];
      T* target = by_row.data() + i * width;
      for (int64_t w = cols.begin; w < cols.end; ++w) target[w] += value;
    }
  }
  for (int64_t band = 0; band < rows.count(); ++band) {
    const int64_t h0 = rows.edges[band], h1 = rows.edges[band + 1];
    std::fill(line.begin(), line.end(), T(0));
    for (int64_t i = 0; i < kernel; ++i) {
      const Range r = inside(i, kernel, dilation, height);
      if (r.begin <= h0 && h1 <= r.end) {
        add_into(by_row.data() + i * width, line.data(), width);
      }
    }
    for (int64_t h = h0; h < h1; ++h) add_into(line.data(), out + h * width, width);
  }
}

// sums[i, j] = sum of x over the pixels where tap (i, j) reads inside, one plane.
template <typename T>
void tap_sums_plane(const T* x, T* sums, int64_t kernel, int64_t dilation, int64_t height, int64_t width,
                    const Bands& rows, std::vector<T>& band_sums, std::vector<T>& line) {
  // band_sums[band, w] = sum of x[h, w] over the rows h of the band.
  std::fill(band_sums.begin(), band_sums.end(), T(0));
  for (int64_t band = 0; band < rows.count(); ++band) {
    T* target = band_sums.data() + band * width;
    for (int64_t h = rows.edges[band]; h < rows.edges[band + 1]; ++h) add_into(x + h * width, target, width);
  }
  for (int64_t i = 0; i < kernel; ++i) {
    const Range r = inside(i, kernel, dilation, height);
    std::fill(line.begin(), line.end(), T(0));
    for (int64_t band = 0; band < rows.count(); ++band) {
      if (r.begin <= rows.edges[band] && rows.edges[band + 1] <= r.end) {
        add_into(band_sums.data() + band * width, line.data(), width);
      }
    }
    for (int64_t j = 0; j < kernel; ++j) {
      const Range cols = inside(j, kernel, dilation, width);
      sums[i * kernel + j] = total(line.data() + cols.begin, cols.end - cols.begin);
    }
  }
}

void tap_expand_add_cpu_(at::Tensor& out, const at::Tensor& taps, int64_t dilation) {
  check_cpu("tap_expand_add_cpu_", out);
  if (reduced_precision(out)) {
    auto wide = out.to(at::kFloat);
    tap_expand_add_cpu_(wide, as_float(taps), dilation);
    out.copy_(wide);
    return;
  }
  const int64_t planes = out.size(0) * out.size(1), height = out.size(2), width = out.size(3);
  const int64_t kernel = taps.size(-1);
  const Bands rows(kernel, dilation, height);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "tap_expand_add_cpu_", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t* q = taps.const_data_ptr<scalar_t>();
    at::parallel_for(0, planes, grain(height * width), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> by_row(kernel * width), line(width);
      for (int64_t plane = begin; plane < end; ++plane) {
        tap_expand_add_plane(o + plane * height * width, q + plane * kernel * kernel, kernel, dilation, height, width,
                             rows, by_row, line);
      }
    });
  });
}

at::Tensor tap_sums_cpu(const at::Tensor& x, int64_t kernel, int64_t dilation) {
  check_cpu("tap_sums_cpu", x);
  if (reduced_precision(x)) {
    return like(tap_sums_cpu(as_float(x), kernel, dilation), x);
  }
  const int64_t planes = x.size(0) * x.size(1), height = x.size(2), width = x.size(3);
  auto sums = at::empty({x.size(0), x.size(1), kernel, kernel}, x.options());
  const Bands rows(kernel, dilation, height);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tap_sums_cpu", [&] {
    const scalar_t* input = x.const_data_ptr<scalar_t>();
    scalar_t* s = sums.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, grain(height * width), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> band_sums(rows.count() * width), line(width);
      for (int64_t plane = begin; plane < end; ++plane) {
        tap_sums_plane(input + plane * height * width, s + plane * kernel * kernel, kernel, dilation, height, width,
                       rows, band_sums, line);
      }
    });
  });
  return sums;
}

// --- the masked window sums, as GEMMs against the shifted masks (op prototype_update) ---------

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

at::Tensor window_sums_cpu(const at::Tensor& x, const at::Tensor& mask, int64_t kernel, int64_t dilation) {
  check_cpu("window_sums_cpu", x);
  if (reduced_precision(x)) {
    return like(window_sums_cpu(as_float(x), as_float(mask), kernel, dilation), x);
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
  if (reduced_precision(coeffs)) {
    return like(window_expand_cpu(as_float(coeffs), as_float(mask), dilation), coeffs);
  }
  const int64_t batch = coeffs.size(0), channels = coeffs.size(1), kernel = coeffs.size(-1);
  const auto windows = window_matrix(mask, kernel, dilation);
  return at::bmm(coeffs.reshape({batch, channels, -1}), windows).view({batch, channels, mask.size(2), mask.size(3)});
}

// --- contraction with the relation weight, without re-laying it out (op prototype_update) -------

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

at::Tensor weight_contract_cpu(const at::Tensor& coeffs, const at::Tensor& weight) {
  check_cpu("weight_contract_cpu", weight);
  if (reduced_precision(weight)) {
    return like(weight_contract_cpu(as_float(coeffs), as_float(weight)), weight);
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

}  // namespace

extern const Kernels kCpuKernels;
const Kernels kCpuKernels = {
    masked_avg_pool_cpu, masked_avg_pool_backward_cpu, tap_expand_add_cpu_, tap_sums_cpu, window_sums_cpu,
    window_expand_cpu, weight_contract_cpu,
};

}  // namespace sst_fast

TORCH_LIBRARY_IMPL(sst_fast, CPU, m) { sst_fast::register_kernels<sst_fast::kCpuKernels>(m); }
