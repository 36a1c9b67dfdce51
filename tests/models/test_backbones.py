"""Backbones: torchvision key layout, stride-8 shapes, dilation, freezing and weight loading.

torchvision is not installed here, so the torchvision ``state_dict`` layouts of ResNet-50 and
VGG-16 are written out below by name, from torchvision's architecture, independently of
``sst_fast``'s own modules.
"""

from __future__ import annotations

import pickle
import re

import pytest
import torch
from torch import nn

import sst_fast
from sst_fast.models import build_backbone, load_backbone_weights
from sst_fast.models.backbones import ResNet50Backbone, ResNet50DeepBackbone, TinyBackbone, VGG16Backbone

# --- torchvision layouts, written out by name -----------------------------------------------


def _bn_shapes(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (channels,),
        f"{prefix}.bias": (channels,),
        f"{prefix}.running_mean": (channels,),
        f"{prefix}.running_var": (channels,),
        f"{prefix}.num_batches_tracked": (),
    }


def torchvision_resnet50_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision.models.resnet50().state_dict() key -> shape (Bottleneck blocks [3, 4, 6, 3])."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    shapes.update(_bn_shapes("bn1", 64))
    shapes.update(_bottleneck_layer_shapes(inplanes=64))
    return shapes


def _bottleneck_layer_shapes(inplanes: int) -> dict[str, tuple[int, ...]]:
    """ResNet-50's layer1..layer4 (torchvision's Bottleneck names, blocks [3, 4, 6, 3]) after a stem of
    ``inplanes`` channels, and fc."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            shapes.update(_bn_shapes(f"{p}.bn1", planes))
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            shapes.update(_bn_shapes(f"{p}.bn2", planes))
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            shapes.update(_bn_shapes(f"{p}.bn3", planes * 4))
            if block == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                shapes.update(_bn_shapes(f"{p}.downsample.1", planes * 4))
            inplanes = planes * 4
    shapes["fc.weight"] = (1000, 2048)
    shapes["fc.bias"] = (1000,)
    return shapes


def torchvision_vgg16_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision.models.vgg16().state_dict() key -> shape."""
    convs = {
        0: (64, 3), 2: (64, 64),
        5: (128, 64), 7: (128, 128),
        10: (256, 128), 12: (256, 256), 14: (256, 256),
        17: (512, 256), 19: (512, 512), 21: (512, 512),
        24: (512, 512), 26: (512, 512), 28: (512, 512),
    }
    shapes: dict[str, tuple[int, ...]] = {}
    for index, (out_ch, in_ch) in convs.items():
        shapes[f"features.{index}.weight"] = (out_ch, in_ch, 3, 3)
        shapes[f"features.{index}.bias"] = (out_ch,)
    for index, (out_f, in_f) in {0: (4096, 512 * 7 * 7), 3: (4096, 4096), 6: (1000, 4096)}.items():
        shapes[f"classifier.{index}.weight"] = (out_f, in_f)
        shapes[f"classifier.{index}.bias"] = (out_f,)
    return shapes


def _is_dropped(name: str, key: str) -> bool:
    """Keys the stride-8 backbones do not have: resnet50's layer4/fc, vgg16's classifier."""
    if name == "resnet50":
        return key.startswith(("layer4.", "fc."))
    return key.startswith("classifier.")


def make_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-layout state dict of random tensors with torchvision's exact shapes.

    The entries the backbones drop (layer4/fc/classifier) have the exact shapes too, but as
    stride-0 views of one random value, so the files stay small (VGG's classifier alone would be
    ~0.5 GB dense).
    """
    shapes = torchvision_resnet50_shapes() if name == "resnet50" else torchvision_vgg16_shapes()
    return random_state(name, shapes, seed)


def random_state(name: str, shapes: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors of ``shapes`` (BatchNorm variances positive, counters integers), the entries backbone
    ``name`` drops as stride-0 views of one value."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 10_000, (), generator=gen, dtype=torch.long)
        elif _is_dropped(name, key):
            state[key] = torch.randn(1, generator=gen).expand(shape)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory):
    """name -> (path of the saved .pth, the state dict saved in it)."""
    root = tmp_path_factory.mktemp("weights")
    files = {}
    for seed, name in enumerate(["resnet50", "vgg16"]):
        state = make_state_dict(name, seed=seed + 1)
        path = root / f"{name}.pth"
        torch.save(state, path)
        files[name] = (path, state)
    return files


BACKBONE_CLASS = {"resnet50": ResNet50Backbone, "vgg16": VGG16Backbone}


def _assert_matches_file(backbone: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = backbone.state_dict()
    for key, value in own.items():
        assert key in state, key
        assert value.shape == state[key].shape, key
        assert value.dtype == state[key].dtype, key
        assert torch.equal(value, state[key]), f"{key} does not hold the file's values"


# --- loading torchvision files --------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_torchvision_layout_loads(name, weights_files):
    path, state = weights_files[name]
    backbone = BACKBONE_CLASS[name]()
    report = load_backbone_weights(backbone, path)
    assert report.missing == []
    expected_unexpected = sorted(k for k in state if _is_dropped(name, k))
    assert expected_unexpected  # the layout really has layer4/fc resp. classifier entries
    assert sorted(report.unexpected) == expected_unexpected
    # Every backbone key is a torchvision key, and every kept torchvision key is in the backbone.
    assert set(backbone.state_dict()) == {k for k in state if not _is_dropped(name, k)}
    _assert_matches_file(backbone, state)
    assert "missing" in str(report) and "unexpected" in str(report)


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_loaded_through_config_and_sst(name, weights_files):
    path, state = weights_files[name]
    torch.manual_seed(0)
    cfg = sst_fast.SSTConfig(backbone=name, backbone_weights=str(path), channels=8)
    model = sst_fast.SST(cfg)
    _assert_matches_file(model.backbone, state)
    assert model.backbone.frozen  # pretrained backbones are frozen by default
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_build_backbone_with_weights(weights_files):
    path, state = weights_files["resnet50"]
    backbone = build_backbone("resnet50", weights=path, freeze=False)
    _assert_matches_file(backbone, state)


def test_build_backbone_unknown_name():
    with pytest.raises(ValueError, match="resnet101"):
        build_backbone("resnet101")


# --- output shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, channels, size, out_size",
    [
        ("resnet50", 1536, (65, 65), (9, 9)),
        ("vgg16", 1024, (65, 65), (9, 9)),
        ("tiny", 256, (64, 64), (8, 8)),
        ("vgg16", 1024, (65, 49), (9, 7)),
        ("tiny", 256, (57, 40), (8, 5)),
    ],
)
def test_output_shape(name, channels, size, out_size):
    torch.manual_seed(0)
    backbone = build_backbone(name).eval()
    assert backbone.out_channels == channels
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, *size))
    assert out.shape == (2, channels, *out_size)
    assert torch.isfinite(out).all()


def test_vgg16_paper_size_321_gives_41():
    torch.manual_seed(0)
    backbone = build_backbone("vgg16").eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 321, 321))
    assert out.shape == (1, 1024, 41, 41)


def test_levels_are_concatenated_layer2_then_layer3():
    torch.manual_seed(0)
    backbone = ResNet50Backbone().eval()
    x = torch.randn(1, 3, 65, 49)
    with torch.no_grad():
        out = backbone(x)
        level2 = backbone.layer2(backbone.layer1(backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))))
        level2_before = level2.clone()  # layer3 must not modify its input in place
        level3 = backbone.layer3(level2)
    assert out.shape == (1, 1536, 9, 7)
    torch.testing.assert_close(level2, level2_before)
    torch.testing.assert_close(out[:, :512], level2)
    torch.testing.assert_close(out[:, 512:], level3)


# --- dilation --------------------------------------------------------------------------------


def test_resnet50_layer3_dilated():
    backbone = ResNet50Backbone()
    first = backbone.layer3[0]
    assert first.conv2.stride == (1, 1)
    assert first.conv2.dilation == (1, 1)
    assert first.conv2.padding == (1, 1)
    assert first.downsample[0].stride == (1, 1)
    assert len(backbone.layer3) == 6
    for block in list(backbone.layer3)[1:]:
        assert block.conv2.stride == (1, 1)
        assert block.conv2.dilation == (2, 2)
        assert block.conv2.padding == (2, 2)
    # layer2 is ResNet v1.5: the stride is on the 3x3 conv and on the downsample.
    assert backbone.layer2[0].conv2.stride == (2, 2)
    assert backbone.layer2[0].conv1.stride == (1, 1)
    assert backbone.layer2[0].downsample[0].stride == (2, 2)
    assert all(block.conv2.dilation == (1, 1) for block in list(backbone.layer1) + list(backbone.layer2))
    assert not hasattr(backbone, "layer4") and not hasattr(backbone, "fc")


def test_vgg16_pool4_stride1_conv5_dilated():
    backbone = VGG16Backbone()
    features = backbone.features
    pool4 = features[23]
    assert isinstance(pool4, nn.MaxPool2d)
    assert pool4.stride in (1, (1, 1))
    for index in (24, 26, 28):
        conv = features[index]
        assert isinstance(conv, nn.Conv2d)
        assert conv.dilation == (2, 2)
        assert conv.padding == (2, 2)
        assert conv.stride == (1, 1)
    for index in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21):
        assert isinstance(features[index], nn.Conv2d)
        assert features[index].dilation == (1, 1)
    for index in (4, 9, 16):
        assert isinstance(features[index], nn.MaxPool2d)
        assert features[index].stride in (2, (2, 2))


# --- freezing --------------------------------------------------------------------------------

SMALL_INPUT = {"resnet50": (33, 33), "vgg16": (33, 33), "tiny": (32, 32)}


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _bn_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("name", ["resnet50", "vgg16", "tiny"])
def test_frozen_backbone(name):
    torch.manual_seed(0)
    backbone = build_backbone(name, freeze=True)
    assert all(not p.requires_grad for p in backbone.parameters())
    bns = _batchnorms(backbone)
    assert (len(bns) > 0) == (name != "vgg16")
    for mode_switch in (lambda: backbone.train(), lambda: backbone.eval().train(True)):
        mode_switch()
        assert backbone.training
        assert all(not bn.training for bn in bns)
    before = _bn_stats(backbone)
    x = torch.randn(2, 3, *SMALL_INPUT[name], requires_grad=True)
    out = backbone(x)
    assert not out.requires_grad and out.grad_fn is None
    after = _bn_stats(backbone)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), f"{key} changed in a frozen backbone"


@pytest.mark.parametrize("name", ["resnet50", "vgg16", "tiny"])
def test_trainable_backbone(name):
    torch.manual_seed(0)
    backbone = build_backbone(name, freeze=False).train()
    assert all(p.requires_grad for p in backbone.parameters())
    bns = _batchnorms(backbone)
    assert all(bn.training for bn in bns)
    before = _bn_stats(backbone)
    out = backbone(torch.randn(2, 3, *SMALL_INPUT[name]))
    assert out.requires_grad
    out.square().mean().backward()
    for pname, p in backbone.named_parameters():
        assert p.grad is not None, f"no gradient reached {pname}"
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in backbone.parameters())
    after = _bn_stats(backbone)
    for key in before:
        if key.endswith("running_mean") or key.endswith("num_batches_tracked"):
            assert not torch.equal(before[key], after[key]), f"{key} did not update in train mode"


def test_frozen_backbone_inside_sst_keeps_bn_eval():
    torch.manual_seed(0)
    model = sst_fast.SST(sst_fast.SSTConfig(backbone="tiny", channels=8, freeze_backbone=True))
    model.train()
    assert model.training and model.backbone.training
    assert all(not bn.training for bn in _batchnorms(model.backbone))
    assert model.embed.training  # the rest of the model still trains
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.embed.parameters())


# --- loading robustness ----------------------------------------------------------------------


def _tiny_state(seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    source = TinyBackbone()
    state = source.state_dict()
    for value in state.values():  # make every entry differ from a fresh init
        if value.is_floating_point():
            value.add_(torch.rand_like(value) + 0.1)
        else:
            value.add_(7)
    return {k: v.clone() for k, v in state.items()}


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda s: s, id="plain"),
        pytest.param(lambda s: {"state_dict": s}, id="state_dict"),
        pytest.param(lambda s: {"model": s}, id="model"),
        pytest.param(lambda s: {"epoch": 3, "state_dict": s}, id="state_dict+metadata"),
        pytest.param(lambda s: {f"module.{k}": v for k, v in s.items()}, id="module-prefix"),
        pytest.param(lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}}, id="state_dict+module"),
    ],
)
@pytest.mark.parametrize("from_file", [True, False], ids=["file", "mapping"])
def test_wrappers_and_prefix_load(wrap, from_file, tmp_path):
    state = _tiny_state()
    saved = wrap(state)
    if from_file:
        source = tmp_path / "w.pth"
        torch.save(saved, source)
    else:
        source = saved
    backbone = TinyBackbone()
    report = load_backbone_weights(backbone, source)
    assert report.missing == [] and report.unexpected == []
    _assert_matches_file(backbone, state)


def test_string_path_loads(tmp_path):
    state = _tiny_state()
    torch.save(state, tmp_path / "w.pth")
    backbone = TinyBackbone()
    load_backbone_weights(backbone, str(tmp_path / "w.pth"))
    _assert_matches_file(backbone, state)


def test_shape_mismatch_names_the_key(tmp_path, weights_files):
    _, resnet_state = weights_files["resnet50"]
    state = dict(resnet_state)
    state["layer2.0.conv2.weight"] = torch.randn(128, 128, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    backbone = ResNet50Backbone()
    original = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ValueError, match=r"layer2\.0\.conv2\.weight"):
        load_backbone_weights(backbone, path)
    # nothing was loaded
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_shape_mismatch_tiny_mapping():
    state = _tiny_state()
    state["stem.0.weight"] = torch.randn(32, 3, 5, 5)
    with pytest.raises(ValueError, match=r"stem\.0\.weight"):
        load_backbone_weights(TinyBackbone(), state)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(TinyBackbone(), tmp_path / "does_not_exist.pth")
    with pytest.raises(FileNotFoundError):
        build_backbone("tiny", weights=tmp_path / "does_not_exist.pth")


@pytest.mark.parametrize(
    "content",
    [
        pytest.param([1, 2, 3], id="list"),
        pytest.param({"a": 1, "b": "x"}, id="dict-of-non-tensors"),
        pytest.param({"conv1.weight": torch.zeros(1), "epoch": 3}, id="mixed"),
        pytest.param(torch.zeros(3), id="tensor"),
        pytest.param({"state_dict": [1, 2]}, id="state_dict-not-mapping"),
    ],
)
def test_not_a_state_dict_raises(content, tmp_path):
    path = tmp_path / "not_sd.pth"
    torch.save(content, path)
    with pytest.raises(ValueError):
        load_backbone_weights(TinyBackbone(), path)


def test_garbage_file_raises_value_error(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a torch file at all\x00\x01\x02")
    with pytest.raises(ValueError):
        load_backbone_weights(TinyBackbone(), path)


class _Custom:  # a pickled object that weights_only loading refuses
    pass


def test_unsafe_pickle_raises_value_error(tmp_path):
    path = tmp_path / "unsafe.pth"
    with open(path, "wb") as f:
        pickle.dump({"stem.0.weight": _Custom()}, f, protocol=2)
    with pytest.raises(ValueError):
        load_backbone_weights(TinyBackbone(), path)


def test_missing_keys_reported_and_strict_raises():
    state = _tiny_state()
    del state["stem.0.weight"]
    backbone = TinyBackbone()
    report = load_backbone_weights(backbone, state)
    assert report.missing == ["stem.0.weight"]
    assert report.unexpected == []
    with pytest.raises(ValueError, match=r"stem\.0\.weight"):
        load_backbone_weights(TinyBackbone(), state, strict=True)


def test_without_num_batches_tracked_reports_nothing_missing(tmp_path, weights_files):
    _, resnet_state = weights_files["resnet50"]
    state = {k: v for k, v in resnet_state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    backbone = ResNet50Backbone()
    report = load_backbone_weights(backbone, path, strict=True)  # strict: must not raise
    assert report.missing == []
    assert sorted(report.unexpected) == sorted(k for k in state if _is_dropped("resnet50", k))
    own = backbone.state_dict()
    for key, value in state.items():
        if not _is_dropped("resnet50", key):
            assert torch.equal(own[key], value), key


def test_tiny_without_num_batches_tracked_strict():
    state = {k: v for k, v in _tiny_state().items() if not k.endswith("num_batches_tracked")}
    report = load_backbone_weights(TinyBackbone(), state, strict=True)
    assert report.missing == [] and report.unexpected == []


def test_whole_model_checkpoint_is_not_backbone_weights(tmp_path):
    """An SST checkpoint (keys 'backbone.*') shares no key with the backbone: an error, not a warning."""
    model = sst_fast.SST(sst_fast.SSTConfig(backbone="tiny", channels=8))
    path = tmp_path / "sst.pth"
    torch.save({"model": model.state_dict()}, path)
    with pytest.raises(ValueError, match="shares no key with this backbone"):
        sst_fast.SST(sst_fast.SSTConfig(backbone="tiny", channels=8, backbone_weights=str(path)))


def test_report_is_kept_on_the_backbone():
    backbone = TinyBackbone()
    assert backbone.load_report is None
    state = _tiny_state()
    del state["stem.0.weight"]
    report = load_backbone_weights(backbone, state)
    assert backbone.load_report is report and report.missing == ["stem.0.weight"]
    assert "1 missing (stem.0.weight)" in str(report)


# --- timm / Hugging Face hub files (.safetensors) ----------------------------------------------


def write_safetensors(path, state: dict[str, torch.Tensor]) -> None:
    """The safetensors layout, written out by hand: 8-byte header length, JSON header, raw little-endian bytes."""
    import json
    import struct

    names = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64"}
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for key, tensor in state.items():
        raw = tensor.contiguous().numpy().tobytes()
        header[key] = {
            "dtype": names[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_a_safetensors_file_loads_like_the_pth(name, weights_files, tmp_path):
    """timm's ResNet-50 has torchvision's keys; the hub ships it as model.safetensors."""
    _, state = weights_files[name]
    path = tmp_path / "model.safetensors"
    write_safetensors(path, state)
    backbone = BACKBONE_CLASS[name]()
    report = load_backbone_weights(backbone, path)
    assert report.missing == []
    _assert_matches_file(backbone, state)


def test_a_damaged_safetensors_file_is_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="cannot read .*model.safetensors.*header runs past the end"):
        load_backbone_weights(ResNet50Backbone(), path)


# --- the deep-stem ResNet-50 (PSPNet/PFENet's resnet50_v2.pth) --------------------------------


def deep_stem_resnet50_shapes(num_batches_tracked: bool = True) -> dict[str, tuple[int, ...]]:
    """Key -> shape of PFENet's ``resnet50_v2.pth``: its ResNet with ``deep_base=True`` (model/resnet.py).

    Stem conv1 [64, 3, 3, 3] / bn1, conv2 [64, 64, 3, 3] / bn2, conv3 [128, 64, 3, 3] / bn3 (no biases), then
    torchvision-named Bottleneck layers [3, 4, 6, 3] whose layer1 takes 128 channels, and fc [1000, 2048].
    """

    shapes: dict[str, tuple[int, ...]] = {}
    for index, (out_ch, in_ch) in enumerate([(64, 3), (64, 64), (128, 64)], start=1):
        shapes[f"conv{index}.weight"] = (out_ch, in_ch, 3, 3)
        shapes.update(_bn_shapes(f"bn{index}", out_ch))
    shapes.update(_bottleneck_layer_shapes(inplanes=128))
    if not num_batches_tracked:
        shapes = {key: shape for key, shape in shapes.items() if not key.endswith("tracked")}
    return shapes


def make_deep_stem_state_dict(seed: int = 0, num_batches_tracked: bool = True) -> dict[str, torch.Tensor]:
    """Random tensors in that layout (layer4/fc as stride-0 views, as :func:`make_state_dict` does)."""
    return random_state("resnet50", deep_stem_resnet50_shapes(num_batches_tracked), seed)


@pytest.fixture(scope="module")
def deep_stem_file(tmp_path_factory):
    """(path, state) of a saved deep-stem file, saved with DataParallel's ``module.`` prefix as semseg trains."""
    state = make_deep_stem_state_dict(seed=7)
    path = tmp_path_factory.mktemp("deep") / "resnet50_v2.pth"
    torch.save({f"module.{key}": value for key, value in state.items()}, path)
    return path, state


@pytest.mark.parametrize("num_batches_tracked", [True, False])
def test_deep_stem_file_loads(num_batches_tracked, tmp_path):
    state = make_deep_stem_state_dict(seed=3, num_batches_tracked=num_batches_tracked)
    path = tmp_path / "resnet50_v2.pth"
    torch.save(state, path)
    backbone = ResNet50DeepBackbone()
    report = load_backbone_weights(backbone, path, strict=True)
    assert report.missing == []
    assert sorted(report.unexpected) == sorted(k for k in state if _is_dropped("resnet50", k))
    own = backbone.state_dict()
    kept = {k for k in state if not _is_dropped("resnet50", k)}
    assert {k for k in own if num_batches_tracked or not k.endswith("num_batches_tracked")} == kept
    for key in kept:
        assert own[key].dtype == state[key].dtype, key
        assert torch.equal(own[key], state[key]), f"{key} does not hold the file's values"


def test_deep_stem_through_config_and_sst(deep_stem_file):
    path, state = deep_stem_file  # saved with the module. prefix
    torch.manual_seed(0)
    model = sst_fast.SST(sst_fast.SSTConfig(backbone="resnet50_deep", backbone_weights=str(path), channels=8))
    assert isinstance(model.backbone, ResNet50DeepBackbone)
    _assert_matches_file(model.backbone, state)
    assert model.backbone.frozen and model.backbone.load_report.missing == []
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_deep_stem_structure_and_features_match_resnet50():
    torch.manual_seed(0)
    deep, plain = build_backbone("resnet50_deep").eval(), ResNet50Backbone().eval()
    assert deep.out_channels == plain.out_channels == 1536
    # The stem: three 3x3 convolutions 64-64-128, stride 2 on the first only; layer1 takes 128 channels.
    stem = [(deep.conv1, 64, 3, 2), (deep.conv2, 64, 64, 1), (deep.conv3, 128, 64, 1)]
    for conv, out_ch, in_ch, stride in stem:
        assert conv.weight.shape == (out_ch, in_ch, 3, 3) and conv.stride == (stride, stride)
        assert conv.padding == (1, 1) and conv.bias is None
    assert deep.layer1[0].conv1.in_channels == 128 and deep.layer1[0].downsample[0].in_channels == 128
    # Layers 2-3: the same strides and dilations as the resnet50 backbone; no layer4/fc.
    for name in ("layer1", "layer2", "layer3"):
        for a, b in zip(getattr(deep, name), getattr(plain, name), strict=True):
            for key in ("stride", "dilation", "padding"):
                assert getattr(a.conv2, key) == getattr(b.conv2, key), (name, key)
    assert not hasattr(deep, "layer4") and not hasattr(deep, "fc")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = deep(x)
        stem_out = deep._stem(x)
        level2 = deep.layer2(deep.layer1(deep.maxpool(stem_out)))
    assert stem_out.shape == (2, 128, 32, 32)
    assert out.shape == plain(x).shape == (2, 1536, 8, 8)
    torch.testing.assert_close(out[:, :512], level2)
    assert torch.isfinite(out).all()


def test_deep_stem_frozen_keeps_batchnorm_eval():
    backbone = build_backbone("resnet50_deep").train()
    assert backbone.frozen and not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.bn2.training and not backbone.bn3.training and not backbone.layer3[5].bn2.training
    before = backbone.bn3.running_mean.clone()
    backbone(torch.randn(1, 3, 64, 64))
    assert torch.equal(backbone.bn3.running_mean, before)


@pytest.mark.parametrize("removed", ["bn2.running_var", "layer3.5.conv3.weight"])
def test_deep_stem_partial_file_names_the_missing_key(removed, tmp_path):
    state = make_deep_stem_state_dict(seed=5)
    del state[removed]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    assert load_backbone_weights(ResNet50DeepBackbone(), path).missing == [removed]
    with pytest.raises(ValueError, match=re.escape(removed)):
        load_backbone_weights(ResNet50DeepBackbone(), path, strict=True)


def test_deep_stem_refuses_a_torchvision_file(weights_files):
    path, _ = weights_files["resnet50"]
    backbone = ResNet50DeepBackbone()
    original = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ValueError, match=r"torchvision's ResNet-50 layout .*backbone 'resnet50'"):
        load_backbone_weights(backbone, path)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, original[key]), key  # nothing was loaded


def test_resnet50_refuses_a_deep_stem_file(deep_stem_file):
    path, _ = deep_stem_file
    with pytest.raises(ValueError, match=r"deep-stem ResNet-50 .*backbone 'resnet50_deep'"):
        load_backbone_weights(ResNet50Backbone(), path)
    with pytest.raises(ValueError, match="resnet50_deep"):
        sst_fast.SST(sst_fast.SSTConfig(backbone="resnet50", backbone_weights=str(path), channels=8))
