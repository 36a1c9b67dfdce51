"""One support set, many queries: ``sst_fast.Segmenter.predict_many`` against ``sst_fast.predict`` per query.

Both variants segment the same 100 queries (photo-sized, 90-160 pixels a side, of different sizes) with the
same 1-shot support set and the same weights, in one run:

* ``predict x100``: ``sst_fast.predict`` called once per query: every call encodes the support, runs its
  self-segmentation and the tuning step again, and the query branch on one query;
* ``segmenter``: ``sst_fast.Segmenter`` made once (the support branch, timed with it), then
  ``predict_many(queries, batch_size=8)``: only the query branch, 8 queries per batch; and with
  ``batch_size=1`` (what reusing the support branch buys without batching the queries).

Model: the embedded configuration (tiny backbone, C = 64, 128 x 128 input, untrained; see ``MODEL``),
``extra_info["parameters"]`` its size. Ratio = ``predict x100`` median / ``segmenter`` median.

Run: ``make bench`` (or ``pytest benchmarks/bench_segmenter.py -o python_files='bench_*.py' --benchmark-only``).
"""

import numpy as np
import pytest
import torch

import sst_fast

QUERIES = 100
BATCH_SIZE = 8
MODEL = dict(backbone="tiny", channels=64, image_size=128)


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    model = sst_fast.SST(sst_fast.SSTConfig(**MODEL)).eval()
    rng = np.random.default_rng(0)
    sizes = rng.integers(90, 161, size=(QUERIES, 2))
    queries = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]
    support = rng.integers(0, 256, size=(120, 140, 3), dtype=np.uint8)
    mask = np.zeros((120, 140), dtype=np.uint8)
    mask[30:90, 40:110] = 1
    return model, queries, [support], [mask]


def _record(benchmark, model):
    benchmark.extra_info.update(
        queries=QUERIES,
        parameters=sum(p.numel() for p in model.parameters()),
        model=MODEL,
    )


@pytest.mark.benchmark(group="segmenter 100 queries 1-shot")
def test_predict_each_query(machine, setting):
    model, queries, supports, masks = setting
    _record(machine, model)
    machine.pedantic(
        lambda: [sst_fast.predict(model, query, supports, masks) for query in queries], rounds=3, warmup_rounds=1
    )


@pytest.mark.benchmark(group="segmenter 100 queries 1-shot")
@pytest.mark.parametrize("batch_size", [BATCH_SIZE, 1])
def test_segmenter_predict_many(machine, setting, batch_size):
    model, queries, supports, masks = setting
    _record(machine, model)
    machine.extra_info["batch_size"] = batch_size

    def run():
        return sst_fast.Segmenter(model, supports, masks).predict_many(queries, batch_size=batch_size)

    machine.pedantic(run, rounds=3, warmup_rounds=1)
