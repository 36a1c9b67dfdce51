"""sst_fast.export: the untuned SST (ssm=False) exported with torch.export, against the same model run eagerly.

The exported program runs the same kernels on the same shapes as the eager model (the fused ops stay custom
ops in the graph), so its logits are compared bit for bit. The tuned model (ssm=True) cannot be exported: its
tuning step differentiates its own loss inside the forward (see sst_fast/export.py).
"""

import io

import pytest
import torch

import sst_fast
from sst_fast import ops
from sst_fast.export import UntunedSegmenter, export_untuned
from sst_fast.reference import SSTReference
from tests.models.helpers import episode, tiny_config

MODELS = {"SST": sst_fast.SST, "SSTReference": SSTReference}


def untuned(name="SST", **overrides):
    torch.manual_seed(0)
    return MODELS[name](tiny_config(ssm=False, **overrides)).eval()


def custom_ops(program):
    return {str(node.target) for node in program.graph.nodes if str(node.target).startswith("sst_fast.")}


def eager_logits(model, inputs):
    with torch.no_grad():
        return model(*inputs).logits


def program_logits(program, inputs):
    with torch.no_grad():
        return program.module()(*inputs)


@pytest.mark.parametrize(
    "name,shots,fusion",
    [("SST", 1, "weighted"), ("SST", 2, "weighted"), ("SST", 2, "max"), ("SSTReference", 2, "weighted")],
)
def test_untuned_export_equals_eager(name, shots, fusion):
    model = untuned(name, fusion=fusion)
    inputs = episode(batch=2, shots=shots)[:3]
    program = export_untuned(model, inputs)
    assert torch.equal(program_logits(program, inputs), eager_logits(model, inputs))
    if name == "SST" and "cpp" in ops.backends("cpu"):  # the fused ops stay custom ops in the graph
        assert "sst_fast.prototype_conv2d.default" in custom_ops(program)
    if name == "SSTReference":
        assert not custom_ops(program)


def test_decomposed_program_keeps_the_custom_ops_and_the_numbers():
    model = untuned()
    inputs = episode(batch=2, shots=2)[:3]
    program = export_untuned(model, inputs).run_decompositions()
    assert torch.equal(program_logits(program, inputs), eager_logits(model, inputs))
    if "cpp" in ops.backends("cpu"):
        assert custom_ops(program) >= {"sst_fast.prototype_conv2d.default"}


def test_reference_backend_exports_plain_aten():
    model = untuned()
    inputs = episode(batch=2, shots=1)[:3]
    with ops.use_backend("reference"):
        program = export_untuned(model, inputs)
        expected = eager_logits(model, inputs)
    assert not custom_ops(program)
    assert torch.equal(program_logits(program, inputs), expected)


def test_dynamic_batch():
    model = untuned()
    program = export_untuned(model, episode(batch=2, shots=2)[:3], dynamic_batch=True)
    for batch in (1, 3):
        inputs = episode(batch=batch, shots=2, seed=batch)[:3]
        assert torch.equal(program_logits(program, inputs), eager_logits(model, inputs))
    with pytest.raises(AssertionError, match=r"size\(\)\[1\] == 2"):  # K is fixed by the example
        program.module()(*episode(batch=2, shots=3)[:3])


def test_saved_program_loads_and_runs():
    model = untuned()
    inputs = episode(batch=2, shots=2)[:3]
    buffer = io.BytesIO()
    torch.export.save(export_untuned(model, inputs), buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    assert torch.equal(program_logits(loaded, inputs), eager_logits(model, inputs))


def test_export_leaves_the_model_as_it_was():
    model = untuned()
    export_untuned(model, episode(batch=2, shots=2)[:3])
    assert model.config.check_inputs is True
    assert "tune" not in vars(model)
    with pytest.raises(ValueError, match="support_masks"):  # the eager model still checks its inputs
        query, supports, masks = episode(batch=2, shots=1)[:3]
        model(query, supports, masks + 2)


def test_refuses_the_tuned_model_and_training_mode():
    inputs = episode(batch=2, shots=1)[:3]
    with pytest.raises(ValueError, match="autograd.grad"):
        export_untuned(sst_fast.SST(tiny_config(ssm=True)).eval(), inputs)
    with pytest.raises(ValueError, match="eval"):
        export_untuned(untuned().train(), inputs)
    with pytest.raises(TypeError):
        UntunedSegmenter(torch.nn.Linear(2, 2))


def test_example_inputs_are_checked():
    query, supports, masks = episode(batch=2, shots=1)[:3]
    masks = masks.clone()
    masks[0, 0, 0, 0] = 7
    with pytest.raises(ValueError, match="support_masks"):
        export_untuned(untuned(), (query, supports, masks))
