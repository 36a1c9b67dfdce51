// CPU kernels of op prototype_conv2d: the tile-window bias T of the forward (tap_expand_add_) and
// its adjoint for the backward's dQ (tap_sums).
#include "common.h"

namespace sst_fast {
namespace {

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

}  // namespace

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

}  // namespace sst_fast
