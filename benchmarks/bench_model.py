"""The SST model, fast against the reference: the head train step, the whole train step, an eval episode.

Variants in every group (one run, same weights and inputs):

* ``reference``: :class:`sst_fast.reference.SSTReference`, float32, eager, the spec;
* ``fast``: :class:`sst_fast.SST`, float32 (the fused ops and the closed-form tuning step alone);
* ``fast-bf16-cl``: :class:`sst_fast.SST` under bfloat16 autocast with channels-last weights
  (the trainer's ``run.amp=bf16 run.channels_last=true``);
* ``reference-bf16-cl``: the reference with the same switches (what the switches alone buy);
* ``fast-bf16-cl-graphs`` (GPU only): ``fast-bf16-cl`` captured once in a CUDA graph and replayed
  (inputs copied into the captured buffers, gradients overwritten in place by every replay).

Shapes (SST_FAST_BENCH_SHAPES picks them; the default is ``paper,demo`` on the CPU, ``gpu`` on a GPU):
``paper`` is the paper's head (ResNet-50 features, 1536 channels at 41 x 41, C = 256, 321 x 321
labels) at batch 2; ``gpu`` is the same at batch 16; ``demo`` is the embedded configuration (tiny
backbone, C = 64, 128 x 128) at batch 8; ``tiny`` is a seconds-long check of the harness itself.
The head step takes the backbone's features as given (``SST.head``); the whole step and the eval
episode start from images (ResNet-50 frozen, as by default).

``extra_info``: ``batch``; ``peak_mib``, the peak memory of the step's first call above what was held before it (GPU:
``torch.cuda.max_memory_allocated``; CPU: resident memory, in a fresh process, Linux ``VmHWM`` reset
through ``/proc/self/clear_refs``); ``flops`` (``reference`` only), the step's FLOPs as counted by
``torch.utils.flop_counter`` on the spec (convolutions and products, forward, backward and double
backward): the model FLOPs that ``benchmarks/gpu_report.py`` divides by each variant's time.

Run: ``make bench`` (or ``pytest benchmarks/bench_model.py -o python_files='bench_*.py' --benchmark-only``).
"""

import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
from selection import selected
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import sst_fast
from sst_fast.engine.speed import cuda_graph, set_memory_format
from sst_fast.reference import SSTReference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RESNET = dict(backbone="resnet50", channels=256, image_size=321)
ALL_SHAPES = {
    "paper": dict(config=RESNET, batch=2, features=41),
    "gpu": dict(config=RESNET, batch=16, features=41),
    "demo": dict(config=dict(backbone="tiny", channels=64, image_size=128), batch=8, features=16),
    "tiny": dict(config=dict(backbone="tiny", channels=8, image_size=32), batch=2, features=4),
}
SHAPES = selected(ALL_SHAPES, default=("gpu",) if DEVICE.type == "cuda" else ("paper", "demo"))
VARIANTS = ("reference", "fast", "fast-bf16-cl", "reference-bf16-cl")
if DEVICE.type == "cuda":
    VARIANTS += ("fast-bf16-cl-graphs",)


def build(shape: str, variant: str, shots: int, first_order: bool = False):
    spec = ALL_SHAPES[shape]
    config = sst_fast.SSTConfig(shots=shots, first_order=first_order, **spec["config"])
    torch.manual_seed(0)
    model = (SSTReference if variant.startswith("reference") else sst_fast.SST)(config)
    low_precision = "bf16-cl" in variant
    set_memory_format(model.to(DEVICE), channels_last=low_precision)
    generator = torch.Generator().manual_seed(0)
    size, batch = config.image_size, spec["batch"]
    masks = (torch.rand(batch, shots, *size, generator=generator) > 0.6).to(torch.uint8)
    inputs = dict(
        query=torch.randn(batch, 3, *size, generator=generator),
        support_images=torch.randn(batch, shots, 3, *size, generator=generator),
        support_masks=masks,
        query_mask=(torch.rand(batch, *size, generator=generator) > 0.6).to(torch.uint8),
    )
    channels, h = model.backbone.out_channels, spec["features"]
    features = dict(
        query_features=torch.randn(batch, channels, h, h, generator=generator),
        support_features=torch.randn(batch, shots, channels, h, h, generator=generator),
    )
    inputs = {key: value.to(DEVICE) for key, value in inputs.items()}
    features = {key: value.to(DEVICE) for key, value in features.items()}
    # A CUDA graph replays its captured kernels: autocast must not cache weight casts across the capture.
    graphs = variant.endswith("graphs")

    def precision():
        if not low_precision:
            return contextlib.nullcontext()
        return torch.autocast(DEVICE.type, dtype=torch.bfloat16, cache_enabled=not graphs)

    return model, inputs, features, precision


def step_body(level: str, shape: str, variant: str, shots: int, first_order: bool = False):
    """(the step without synchronisation or gradient reset, the model)."""
    model, inputs, features, precision = build(shape, variant, shots, first_order)

    if level == "head":

        def body():
            model.train()
            with precision():
                out = model.head(
                    features["query_features"],
                    features["support_features"],
                    inputs["support_masks"],
                    inputs["query_mask"],
                    size=inputs["query"].shape[-2:],
                )
            out.loss.backward()

    elif level == "train":

        def body():
            model.train()
            with precision():
                out = model(**inputs)
            out.loss.backward()

    else:

        def body():
            model.eval()
            with torch.no_grad(), precision():
                model(inputs["query"], inputs["support_images"], inputs["support_masks"])

    return body, model


def captured(body, model):
    """``body`` captured in a CUDA graph (:func:`sst_fast.engine.speed.cuda_graph`); returns its replay."""
    graph, _ = cuda_graph(body, model)
    return graph.replay


def step_function(level: str, shape: str, variant: str, shots: int, first_order: bool = False):
    body, model = step_body(level, shape, variant, shots, first_order)
    if variant.endswith("graphs"):
        replay = captured(body, model)

        def step():
            replay()
            torch.cuda.synchronize()

        return step

    def step():
        model.zero_grad(set_to_none=True)
        body()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    return step


class FlopCount(TorchDispatchMode):
    """The FLOPs of the convolutions and matrix products run inside, by ``torch.utils.flop_counter``'s formulas.

    ``FlopCounterMode`` itself tracks modules with backward hooks, which ``torch.autograd.grad`` inside
    the counted code (the inner gradient) does not support; this counts the same ops without them.
    """

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(step) -> int:
    """The FLOPs of one call of an eager ``step``."""
    with FlopCount() as counter:
        step()
    return counter.total


# (level, shape, shots, first order)
CASES = [
    case
    for case in [
        ("head", "paper", 1, False),
        ("head", "paper", 1, True),
        ("head", "demo", 1, False),
        ("head", "demo", 1, True),
        ("head", "demo", 5, False),
        ("train", "demo", 1, False),
        ("train", "demo", 5, False),
        ("eval", "paper", 1, False),
        ("eval", "demo", 1, False),
        ("eval", "demo", 5, False),
        ("head", "gpu", 1, False),
        ("head", "gpu", 5, False),
        ("train", "gpu", 1, False),
        ("train", "gpu", 5, False),
        ("eval", "gpu", 1, False),
        ("eval", "gpu", 5, False),
        ("head", "tiny", 1, False),
        ("train", "tiny", 2, False),
        ("eval", "tiny", 2, False),
    ]
    if case[1] in SHAPES
]


def peak_memory_mib(step, level, shape, variant, shots, first_order) -> float:
    """The peak memory of the first call of ``step`` (on the CPU: of the same step, built in a fresh process)
    above what was held before it, in MiB (see the module's docstring)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    code = f"""
import json, sys
sys.path.insert(0, "benchmarks")
import bench_model as b
step = b.step_function({level!r}, {shape!r}, {variant!r}, {shots}, {first_order})
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
step()
print(json.dumps((status("VmHWM") - before) / 1024))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "level,shape,shots,first_order",
    CASES,
    ids=[
        f"{lv}-{sh}-{k}shot-{'first' if fo else 'second'}" if lv != "eval" else f"{lv}-{sh}-{k}shot"
        for lv, sh, k, fo in CASES
    ],
)
def test_model_step(machine, level, shape, shots, first_order, variant):
    order = "" if level == "eval" else (" first order" if first_order else " second order")
    machine.group = f"{level} {shape} {shots}-shot{order}"
    machine.extra_info["batch"] = ALL_SHAPES[shape]["batch"]
    step = step_function(level, shape, variant, shots, first_order)
    machine.extra_info["peak_mib"] = round(peak_memory_mib(step, level, shape, variant, shots, first_order), 1)
    step()  # warm-up
    if variant == "reference":
        machine.extra_info["flops"] = count_flops(step)
    rounds = 3 if shape in ("paper", "gpu") or shots > 1 else 5
    if DEVICE.type == "cuda" and shape != "paper":
        rounds = 10
    machine.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
