"""The fast model on a CUDA GPU, with the CUDA and the Triton kernels, against the reference on the CPU.

The same checks as ``test_fast_equivalence`` and ``test_speed_switches``, moved to the GPU: every output and
every parameter gradient of ``sst_fast.SST`` on CUDA equal to ``SSTReference``'s on the CPU within the
rounding error of every sum the two compute, the backbone's included (tests.tolerance; TF32 off), bf16
autocast no less accurate than the reference's own, the channels-last layout, and a train step captured
in a CUDA graph that replays to the eager step's results. Dropout is off: the CPU and CUDA random streams
differ. Skipped without a GPU (and a failure then under ``SST_FAST_REQUIRE_GPU=1``).
"""

import copy

import pytest
import torch

import sst_fast
from sst_fast import ops
from sst_fast.engine.speed import cuda_graph, set_memory_format
from sst_fast.export import export_untuned
from sst_fast.predict import input_size, prepare_query, prepare_supports
from sst_fast.reference import SSTReference
from tests.conftest import balance_classifier
from tests.models.helpers import episode, model_tolerance, tiny_config
from tests.tolerance import unit_roundoff
from tests.models.test_fast_equivalence import OUTPUTS, assert_equivalent, run, unbalanced_threshold

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BACKENDS = [
    pytest.param(
        "cuda", marks=pytest.mark.skipif("cuda" not in ops.backends(), reason="no CUDA kernels or no GPU"), id="cuda"
    ),
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(
            "triton" not in ops.backends() or not torch.cuda.is_available(),
            reason="the triton backend was not registered for CUDA",
        ),
        id="triton",
    ),
]


def cuda_pair(dtype, **overrides):
    """The fast model on the GPU and the reference on the CPU, same weights."""
    config = tiny_config(**{"tune_step": 20.0, "learnable_step": True, **overrides})
    fast = sst_fast.SST(config).to(dtype).cuda()
    reference = SSTReference(config).to(dtype)
    return fast, reference


def to_cuda(inputs):
    return tuple(x.cuda() for x in inputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shots", [1, 5])
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fast_model_on_the_gpu_equals_the_reference(backend, dtype, shots, first_order, mode):
    fast, reference = cuda_pair(dtype, shots=shots, first_order=first_order, channels=16)
    inputs = episode(batch=3, shots=shots, size=40, dtype=dtype, seed=shots)
    with ops.use_backend(backend):
        fast = unbalanced_threshold(fast, *to_cuda(inputs))
        reference.load_state_dict(fast.state_dict())
        out, grads = run(fast, to_cuda(inputs), mode)
    expected, expected_grads = run(reference, inputs, mode)
    tol, grad_tol = (model_tolerance(reference, inputs, dtype, gradients=g, backbone=True) for g in (False, True))
    for name in OUTPUTS:
        actual = getattr(out, name)
        assert_equivalent(None if actual is None else actual.cpu(), getattr(expected, name), tol, name)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        assert_equivalent(grads[name].cpu(), grad, grad_tol, f"d loss / d {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shots", [1, 5])
def test_bf16_autocast_on_the_gpu_is_as_accurate_as_the_reference(backend, shots):
    """Logits and gradients under bf16 autocast on CUDA, on the mean over three models, no further from float32's
    than twice the reference's own under it, plus one bf16 rounding (test_speed_switches says why)."""
    errors = {name: {"fast": [], "reference": []} for name in ("logits", "gradients")}
    for seed in range(3):
        torch.manual_seed(seed)
        fast, reference = cuda_pair(torch.float32, shots=shots, tune_step=5.0, learnable_step=False)
        reference = reference.cuda()
        reference.load_state_dict(fast.state_dict())
        inputs = to_cuda(episode(batch=2, shots=shots, seed=seed))
        expected, expected_grads = run(reference, inputs, "train")
        with ops.use_backend(backend), torch.autocast("cuda", dtype=torch.bfloat16):
            out, grads = run(fast, inputs, "train")
            reference_out, reference_grads = run(reference, inputs, "train")
        assert out.logits.dtype == torch.bfloat16
        assert out.tuned_prototypes.dtype == torch.float32, "the tuning step runs in float32 under autocast"
        for name, grad in expected_grads.items():
            errors["gradients"]["fast"].append(relative_error(grads[name], grad))
            errors["gradients"]["reference"].append(relative_error(reference_grads[name], grad))
        errors["logits"]["fast"].append(relative_error(out.logits, expected.logits))
        errors["logits"]["reference"].append(relative_error(reference_out.logits, expected.logits))
    for name, by_model in errors.items():
        fast_error, reference_error = (sum(e) / len(e) for e in by_model.values())
        assert fast_error <= 2 * reference_error + unit_roundoff(torch.bfloat16), (name, fast_error, reference_error)


def relative_error(actual, expected):
    return ((actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_on_the_gpu_equals_the_reference(backend):
    fast, reference = cuda_pair(torch.float64, shots=2)
    inputs = episode(batch=2, shots=2, dtype=torch.float64)
    with ops.use_backend(backend):
        fast = unbalanced_threshold(fast, *to_cuda(inputs))
        reference.load_state_dict(fast.state_dict())
        set_memory_format(fast, channels_last=True)
        out, grads = run(fast, to_cuda(inputs), "train")
    expected, expected_grads = run(reference, inputs, "train")
    tol = model_tolerance(reference, inputs, torch.float64, gradients=True, backbone=True)
    for name in OUTPUTS:
        actual = getattr(out, name)
        assert_equivalent(None if actual is None else actual.cpu(), getattr(expected, name), tol, name)
    for name, grad in expected_grads.items():
        assert_equivalent(grads[name].cpu(), grad, tol, f"d loss / d {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("amp", [False, True], ids=["f32", "bf16"])
def test_a_train_step_captured_in_a_cuda_graph_replays_the_eager_step(backend, amp):
    """Forward, inner gradient, tuning and outer backward in one CUDA graph: each replay on new inputs
    (copied into the captured ones) gives the eager step's loss and gradients on them."""
    fast, _ = cuda_pair(torch.float32, shots=2, tune_step=5.0)
    fast.train()
    static = [x.clone() for x in to_cuda(episode(batch=2, shots=2, seed=0))]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
            loss = fast(*static).loss
        loss.backward()
        return loss

    with ops.use_backend(backend):
        graph, captured_loss = cuda_graph(step, fast)
        # The gradients the graph writes on every replay (they live in its memory pool).
        captured = {name: p.grad for name, p in fast.named_parameters() if p.grad is not None}
        assert captured, "the captured step must produce gradients"

        for seed in (1, 2):
            new = to_cuda(episode(batch=2, shots=2, seed=seed))
            for buffer, value in zip(static, new, strict=True):
                buffer.copy_(value)
            graph.replay()
            fast.zero_grad(set_to_none=True)
            eager_loss = step()
            torch.testing.assert_close(captured_loss, eager_loss, rtol=1e-5, atol=1e-6)
            for name, p in fast.named_parameters():
                if p.grad is not None:
                    torch.testing.assert_close(captured[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


# --- the user's paths on the GPU: many queries against one support set, the exported program ----------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_segmenter_on_the_gpu_gives_predicts_masks_on_the_cpu(backend):
    """sst_fast.Segmenter with the model on CUDA (photos and masks given as arrays on the host) against
    sst_fast.predict with the same weights on the CPU, in float64: the masks agree on every pixel whose margin is
    beyond the rounding of the whole model on either device."""
    from tests.test_segmenter import QUERY_SIZES, SUPPORT_SIZES, _assert_same_mask, _image, _mask, _reference_logits

    queries = [_image(hw, i) for i, hw in enumerate(QUERY_SIZES)]
    supports = [_image(hw, 10 + i) for i, hw in enumerate(SUPPORT_SIZES)]
    masks = [_mask(hw, 20 + i) for i, hw in enumerate(SUPPORT_SIZES)]
    torch.manual_seed(0)
    host = sst_fast.SST(tiny_config(channels=8, tune_step=5.0)).double().eval()
    size = input_size(host, None)
    support_batch, mask_batch = prepare_supports(host, supports, masks, size)
    query_batch = prepare_query(queries[0], "query", size)[0][None].double()
    host = balance_classifier(host, query_batch, support_batch, mask_batch)
    tol = model_tolerance(host, (query_batch, support_batch, mask_batch), torch.float64, backbone=True)
    device = copy.deepcopy(host).cuda()
    with ops.use_backend(backend):
        results = sst_fast.Segmenter(device, supports, masks).predict_many(queries, batch_size=3)
    for index, (query, result) in enumerate(zip(queries, results, strict=True)):
        expected = sst_fast.predict(host, query, supports, masks)
        logits = _reference_logits(host, query, supports, masks)
        _assert_same_mask(result, expected, logits, tol, f"queries[{index}]")
    assert any(0 < result.mean() < 1 for result in results), "every mask is constant: the comparison is vacuous"


@pytest.mark.parametrize("backend", BACKENDS)
def test_untuned_export_on_the_gpu_equals_eager(backend):
    """export_untuned of a CUDA model under a GPU backend: the program runs that backend's kernels and its logits
    are the eager model's."""
    torch.manual_seed(0)
    model = sst_fast.SST(tiny_config(ssm=False)).eval().cuda()
    inputs = to_cuda(episode(batch=2, shots=2)[:3])
    with ops.use_backend(backend), torch.no_grad():
        program = export_untuned(model, inputs)
        exported = program.module()(*inputs)
        eager = model(*inputs).logits
    assert exported.device.type == "cuda"
    tol = model_tolerance(model, tuple(x.cpu() for x in inputs), torch.float32)
    assert_equivalent(exported.cpu(), eager.cpu(), tol, "logits")
    if backend == "cuda":  # the fused op stays a custom op in the graph
        assert any(str(node.target) == "sst_fast.prototype_conv2d.default" for node in program.graph.nodes)
