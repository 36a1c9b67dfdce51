// The sst_fast op schemas (docs/design.md §3) and the Python module stub of sst_fast.ops._C.
//
// Kernels are registered per dispatch key in csrc/cpu and csrc/cuda; fake (meta) kernels and
// autograd are registered from Python by sst_fast.ops._compiled, which set_python_module names
// so that torch tells a C++ user which module to import.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(sst_fast, m) {
  m.set_python_module("sst_fast.ops._compiled");
  m.def("masked_avg_pool(Tensor features, Tensor mask, float eps) -> Tensor");
  m.def(
      "masked_avg_pool_backward(Tensor grad, Tensor features, Tensor mask, float eps, bool[2] output_mask)"
      " -> (Tensor, Tensor)");
  m.def("prototype_conv2d(Tensor query, Tensor proto, Tensor weight, Tensor? bias, int dilation) -> Tensor");
  m.def(
      "prototype_conv2d_backward(Tensor grad, Tensor query, Tensor proto, Tensor weight, int dilation,"
      " bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  // prototype_update = pool(dL/dF, mask), the pooled feature gradient; the public Python op
  // sst_fast.ops.tuned_prototype(delta, mask, weight, proto, step) is proto - step * prototype_update.
  m.def("prototype_update(Tensor delta, Tensor mask, Tensor weight, float eps, int dilation) -> Tensor");
  m.def(
      "prototype_update_backward(Tensor grad, Tensor delta, Tensor mask, Tensor weight, float eps, int dilation,"
      " bool[2] output_mask) -> (Tensor, Tensor)");
}

// `import sst_fast.ops._C` loads this library, which runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "sst_fast kernels (torch.ops.sst_fast)", -1, nullptr};
  return PyModule_Create(&module);
}
