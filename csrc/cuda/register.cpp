// The CUDA kernels of the sst_fast ops (one <op>_kernel.cu per op), registered for the CUDA
// dispatch key. Plain C++: compiled with the host compiler in CUDA builds only.
#include "kernels.h"

namespace sst_fast {

extern const Kernels kCudaKernels;
const Kernels kCudaKernels = {
    masked_avg_pool_cuda,           // op masked_avg_pool
    masked_avg_pool_backward_cuda,  // op masked_avg_pool (backward)
    tap_expand_add_cuda,            // op prototype_conv2d (forward)
    tap_sums_cuda,                  // op prototype_conv2d (backward)
    window_sums_cuda,               // op prototype_update
    window_expand_cuda,             // op prototype_update (backward)
};

}  // namespace sst_fast

TORCH_LIBRARY_IMPL(sst_fast, CUDA, m) { sst_fast::register_kernels<sst_fast::kCudaKernels>(m); }
