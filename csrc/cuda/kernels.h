// The CUDA Kernels members (csrc/ops.h), declared for the <op>_kernel.cu files that define them
// and for register.cpp, which registers them. Plain C++, for nvcc and the host compiler alike.
#pragma once

#include "../ops.h"

namespace sst_fast {

// --- the Kernels members, one file per op ---------------------------------------------------
// masked_avg_pool_kernel.cu
at::Tensor masked_avg_pool_cuda(const at::Tensor& features, const at::Tensor& mask, double eps);
std::tuple<at::Tensor, at::Tensor> masked_avg_pool_backward_cuda(
    const at::Tensor& grad, const at::Tensor& features, const at::Tensor& mask, double eps,
    std::array<bool, 2> output_mask);
// prototype_conv2d_kernel.cu
void tap_expand_add_cuda(at::Tensor& out, const at::Tensor& taps, int64_t dilation);
at::Tensor tap_sums_cuda(const at::Tensor& x, int64_t kernel_size, int64_t dilation);
// prototype_update_kernel.cu
at::Tensor window_sums_cuda(const at::Tensor& x, const at::Tensor& mask, int64_t kernel_size, int64_t dilation);
at::Tensor window_expand_cuda(const at::Tensor& coeffs, const at::Tensor& mask, int64_t dilation);

}  // namespace sst_fast
