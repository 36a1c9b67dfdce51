"""The SST model, fast against the reference: the head train step, the whole train step, an eval episode.

Variants in every group (one run, same weights and inputs):

* ``reference``: :class:`sst_fast.reference.SSTReference`, float32, eager, the spec;
* ``fast``: :class:`sst_fast.SST`, float32 (the fused ops and the closed-form tuning step alone);
* ``fast-bf16-cl``: :class:`sst_fast.SST` under bfloat16 autocast with channels-last weights
  (the trainer's ``run.amp=bf16 run.channels_last=true``);
* ``reference-bf16-cl``: the reference with the same switches (what the switches alone buy).

Shapes: ``paper`` is the paper's head (ResNet-50 features, 1536 channels at 41 x 41, C = 256,
321 x 321 labels) at batch 2; ``demo`` is the embedded configuration (tiny backbone, C = 64,
128 x 128) at batch 8. The head step takes the backbone's features as given (``SST.head``); the
whole step and the eval episode start from images. ``extra_info["peak_mib"]`` is the step's peak
resident memory above the process's baseline, measured in a fresh process.

Run: ``make bench`` (or ``pytest benchmarks/bench_model.py -o python_files='bench_*.py' --benchmark-only``).
"""

import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch

import sst_fast
from sst_fast.engine.speed import set_memory_format
from sst_fast.reference import SSTReference

SHAPES = {
    "paper": dict(config=dict(backbone="resnet50", channels=256, image_size=321), batch=2, features=41),
    "demo": dict(config=dict(backbone="tiny", channels=64, image_size=128), batch=8, features=16),
}
VARIANTS = ("reference", "fast", "fast-bf16-cl", "reference-bf16-cl")


def build(shape: str, variant: str, shots: int, first_order: bool = False):
    spec = SHAPES[shape]
    config = sst_fast.SSTConfig(shots=shots, first_order=first_order, **spec["config"])
    torch.manual_seed(0)
    model = (SSTReference if variant.startswith("reference") else sst_fast.SST)(config)
    low_precision = variant.endswith("bf16-cl")
    set_memory_format(model, channels_last=low_precision)
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

    def precision():
        return torch.autocast("cpu", dtype=torch.bfloat16) if low_precision else contextlib.nullcontext()

    return model, inputs, features, precision


def step_function(level: str, shape: str, variant: str, shots: int, first_order: bool = False):
    model, inputs, features, precision = build(shape, variant, shots, first_order)

    if level == "head":

        def step():
            model.train().zero_grad(set_to_none=True)
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

        def step():
            model.train().zero_grad(set_to_none=True)
            with precision():
                out = model(**inputs)
            out.loss.backward()

    else:

        def step():
            model.eval()
            with torch.no_grad(), precision():
                model(inputs["query"], inputs["support_images"], inputs["support_masks"])

    return step


CASES = [
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
]


def peak_memory_mib(level, shape, variant, shots, first_order) -> float:
    """The step's peak resident memory above what the process held before it, in a fresh process.

    Linux: the high-water mark (``VmHWM``) is reset through ``/proc/self/clear_refs`` after the
    model and inputs are built, so that only the step's own allocations count.
    """
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
    if level == "eval" and first_order:
        pytest.skip("evaluation has no order")
    order = "" if level == "eval" else (" first order" if first_order else " second order")
    machine.group = f"{level} {shape} {shots}-shot{order}"
    step = step_function(level, shape, variant, shots, first_order)
    step()  # warm-up
    machine.extra_info["peak_mib"] = round(peak_memory_mib(level, shape, variant, shots, first_order), 1)
    rounds = 3 if shape == "paper" or shots > 1 else 5
    machine.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
