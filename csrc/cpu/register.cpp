// The CPU kernels of the sst_fast ops (one <op>_kernel.cpp per op), registered for the CPU
// dispatch key.
#include "common.h"

namespace sst_fast {

extern const Kernels kCpuKernels;
const Kernels kCpuKernels = {
    masked_avg_pool_cpu,           // op masked_avg_pool
    masked_avg_pool_backward_cpu,  // op masked_avg_pool (backward)
    tap_expand_add_cpu_,           // op prototype_conv2d (forward)
    tap_sums_cpu,                  // op prototype_conv2d (backward)
    window_sums_cpu,               // op prototype_update
    window_expand_cpu,             // op prototype_update (backward)
    weight_contract_cpu,           // ops prototype_update and its backward
};

}  // namespace sst_fast

TORCH_LIBRARY_IMPL(sst_fast, CPU, m) { sst_fast::register_kernels<sst_fast::kCpuKernels>(m); }
