"""Backbones: ImageNet networks cut and dilated to output stride 8, in torchvision's key layout.

Every backbone maps images [N, 3, H, W] to two concatenated feature levels at stride 8,
[N, out_channels, ~H/8, ~W/8] (paper §4.1, as CANet). Parameter names follow torchvision, so
a torchvision ``state_dict`` file loads directly (:func:`load_backbone_weights`); nothing is
ever downloaded. ``resnet50_deep`` is the exception: the deep-stem ResNet-50 of PSPNet/PFENet, in the
key layout of their ``resnet50_v2.pth``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

logger = logging.getLogger(__name__)


class Backbone(nn.Module):
    """Feature extractor with an optional freeze: no gradients and BatchNorm kept in eval mode."""

    out_channels: int

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False
        self.load_report: LoadReport | None = None  # set by load_backbone_weights

    def freeze(self) -> Backbone:
        self.frozen = True
        self.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.frozen:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                return self.extract(images)
        return self.extract(images)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def foreign_layout(self, state: Mapping[str, torch.Tensor]) -> str | None:
        """Why ``state`` is another backbone's known layout (and which backbone name loads it), else ``None``."""
        return None


# --- ResNet-50 ------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Backbone(Backbone):
    """ResNet-50 to layer3; layer3 dilated (stride 1, dilation 2); features ``cat(layer2, layer3)``."""

    out_channels = 512 + 1024

    def __init__(self) -> None:
        super().__init__()
        self.dilation = 1
        self.inplanes = self._build_stem()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=2, dilate=True)
        _init_like_torchvision(self)

    def _build_stem(self) -> int:
        """torchvision's stem: one 7x7 convolution with stride 2. Returns its output channels."""
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        return 64

    def _stem(self, images: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(images)))  # stride 2

    def foreign_layout(self, state: Mapping[str, torch.Tensor]) -> str | None:
        if _resnet_stem(state) == "deep":
            return (
                "it is a deep-stem ResNet-50 (three 3x3 stem convolutions conv1/conv2/conv3, the layout of "
                "PFENet's resnet50_v2.pth), not torchvision's; load it with backbone 'resnet50_deep' "
                "(model.backbone=resnet50_deep)"
            )
        return None

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        # As torchvision's replace_stride_with_dilation: the first block keeps the previous
        # dilation, the stride becomes dilation for the blocks after it.
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, previous_dilation, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self._stem(images))  # stride 4
        x = self.layer1(x)
        level2 = self.layer2(x)  # [N, 512, H/8, W/8]
        level3 = self.layer3(level2)  # [N, 1024, H/8, W/8]
        return torch.cat([level2, level3], 1)


class ResNet50DeepBackbone(ResNet50Backbone):
    """ResNet-50 with the deep stem of PSPNet/PFENet/BAM/HDMNet (their ImageNet ``resnet50_v2.pth``).

    The stem is three 3x3 convolutions 64-64-128 (stride 2 on the first), each with BatchNorm and
    ReLU, then the max-pool; layer1 takes 128 channels. The rest is :class:`ResNet50Backbone`:
    layers to layer3, layer3 dilated (stride 1, dilation 2), features ``cat(layer2, layer3)`` at
    stride 8, 1536 channels. Keys follow that file: ``conv1, bn1, conv2, bn2, conv3, bn3,
    layer1..layer3``; its ``layer4.*`` and ``fc.*`` are reported as unexpected. (PFENet's own network
    also dilates layer3's first block and layer4; here the dilation is ``resnet50``'s, so the two
    backbones give the encoder the same features.)
    """

    def _build_stem(self) -> int:
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        return 128

    def _stem(self, images: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(images)))  # stride 2
        x = self.relu(self.bn2(self.conv2(x)))
        return self.relu(self.bn3(self.conv3(x)))

    def foreign_layout(self, state: Mapping[str, torch.Tensor]) -> str | None:
        if _resnet_stem(state) == "torchvision":
            return (
                "it is torchvision's ResNet-50 layout (one 7x7 stem convolution conv1), not the deep-stem "
                "layout of PFENet's resnet50_v2.pth; load it with backbone 'resnet50' (model.backbone=resnet50)"
            )
        return None


def _resnet_stem(state: Mapping[str, torch.Tensor]) -> str | None:
    """Which ResNet stem a state dict holds: ``"deep"`` (3x3 conv1 and a conv3), ``"torchvision"`` (7x7 conv1)."""
    conv1 = state.get("conv1.weight")
    if not isinstance(conv1, torch.Tensor) or conv1.dim() != 4:
        return None
    if conv1.shape[-1] == 3 and "conv3.weight" in state:
        return "deep"
    if conv1.shape[-1] == 7:
        return "torchvision"
    return None


# --- VGG-16 ---------------------------------------------------------------------------------

# torchvision's vgg16 ``features`` indices: conv4_3's ReLU is 22, pool4 is 23, conv5_3's ReLU is 29.
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "pool4", 512, 512, 512)
_VGG16_CONV4_END = 23


class VGG16Backbone(Backbone):
    """VGG-16 ``features`` to conv5_3: pool4 with stride 1, conv5 dilation 2; ``cat(conv4_3, conv5_3)``.

    Pools 1-3 use ``ceil_mode`` (as DeepLab's VGG), so a 321x321 input gives 41x41 features like ResNet-50.
    """

    out_channels = 512 + 512

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels, dilation = 3, 1
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            elif item == "pool4":
                layers.append(nn.MaxPool2d(3, stride=1, padding=1))
                dilation = 2
            else:
                layers += [nn.Conv2d(in_channels, item, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
                in_channels = item
        self.features = nn.Sequential(*layers)
        _init_like_torchvision(self)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        conv4 = self.features[:_VGG16_CONV4_END](images)  # [N, 512, H/8, W/8]
        conv5 = self.features[_VGG16_CONV4_END:](conv4)  # [N, 512, H/8, W/8]
        return torch.cat([conv4, conv5], 1)


# --- tiny -----------------------------------------------------------------------------------


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(Backbone):
    """A small CNN with the same interface (stride 8, two levels), trainable on a CPU in minutes."""

    out_channels = 128 + 128

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, 32, stride=2)
        self.stage1 = _conv_bn_relu(32, 64, stride=2)
        self.stage2 = nn.Sequential(_conv_bn_relu(64, 128, stride=2), _conv_bn_relu(128, 128))
        self.stage3 = nn.Sequential(_conv_bn_relu(128, 128, dilation=2), _conv_bn_relu(128, 128, dilation=2))
        _init_like_torchvision(self)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        level2 = self.stage2(self.stage1(self.stem(images)))  # [N, 128, H/8, W/8]
        level3 = self.stage3(level2)
        return torch.cat([level2, level3], 1)


BACKBONE_CLASSES: dict[str, type[Backbone]] = {
    "resnet50": ResNet50Backbone,
    "resnet50_deep": ResNet50DeepBackbone,
    "vgg16": VGG16Backbone,
    "tiny": TinyBackbone,
}


def build_backbone(name: str, weights: str | os.PathLike | None = None, freeze: bool = True) -> Backbone:
    """The backbone ``name``, with weights from a local file when given, frozen when asked."""
    if name not in BACKBONE_CLASSES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONE_CLASSES)}, got {name!r}")
    backbone = BACKBONE_CLASSES[name]()
    if weights is not None:
        logger.info("backbone %s: %s", name, load_backbone_weights(backbone, weights))
    return backbone.freeze() if freeze else backbone


def _init_like_torchvision(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --- weights --------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadReport:
    """What a weights file held compared with the backbone.

    ``missing``: backbone parameters/buffers the file did not have (left at their initial values).
    ``unexpected``: file entries the backbone does not use (for torchvision files: ``layer4.*``,
    ``fc.*``, ``classifier.*``, which these stride-8 backbones drop).
    """

    missing: list[str]
    unexpected: list[str]

    def __str__(self) -> str:
        def listing(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        def count(what: str, keys: list[str]) -> str:
            return f"{len(keys)} {what}" + (f" ({listing(keys)})" if keys else "")

        return f"loaded weights: {count('missing', self.missing)}; {count('unexpected', self.unexpected)}"


def load_backbone_weights(
    backbone: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    strict: bool = False,
) -> LoadReport:
    """Load a torchvision-format state dict (a local ``.pth`` path, a ``.safetensors`` file as timm and the
    Hugging Face hub distribute them, or a mapping) into ``backbone``.

    Accepts a plain state dict or one wrapped as ``{"state_dict": ...}``/``{"model": ...}``, with or
    without a DataParallel ``module.`` prefix. A shape mismatch is an error naming the keys; missing
    keys are reported (and an error with ``strict=True``); a file that shares no key with the
    backbone (another layout, a whole-model checkpoint) is an error, and so is the other ResNet-50
    stem (a torchvision file for ``resnet50_deep``, a deep-stem file for ``resnet50``), naming the
    backbone that loads it. ``num_batches_tracked``
    buffers, absent from older torchvision files, do not count as missing. The report is also kept
    as ``backbone.load_report``.
    """
    if isinstance(source, Mapping):
        state, where = source, "the given state dict"
    else:
        where = os.fspath(source)
        if not os.path.isfile(where):
            raise FileNotFoundError(f"backbone weights: no such file {where!r}")
        try:
            if _is_safetensors(where):
                state = read_safetensors(where)
            else:
                state = torch.load(where, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"backbone weights: cannot read {where!r} as a torch state dict: {exc}") from exc
    state = _unwrap_state_dict(state, where)
    foreign = backbone.foreign_layout(state) if isinstance(backbone, Backbone) else None
    if foreign:
        raise ValueError(f"backbone weights: {where} does not fit the {type(backbone).__name__}: {foreign}")

    own = backbone.state_dict()
    if not own.keys() & state.keys():
        raise ValueError(
            f"backbone weights: {where} shares no key with this backbone; expected torchvision's layout "
            f"(e.g. {', '.join(list(own)[:3])}), found {', '.join(list(state)[:3]) or 'nothing'}"
        )
    mismatched = [
        f"{key}: file {list(value.shape)} vs backbone {list(own[key].shape)}"
        for key, value in state.items()
        if key in own and tuple(value.shape) != tuple(own[key].shape)
    ]
    if mismatched:
        raise ValueError(f"backbone weights from {where}: shape mismatch for " + "; ".join(mismatched))
    result = backbone.load_state_dict(state, strict=False)
    report = LoadReport(
        missing=[key for key in result.missing_keys if not key.endswith("num_batches_tracked")],
        unexpected=list(result.unexpected_keys),
    )
    if strict and report.missing:
        raise ValueError(f"backbone weights from {where}: {report}")
    if isinstance(backbone, Backbone):
        backbone.load_report = report
    if report.missing:
        logger.warning("backbone weights from %s: %s", where, report)
    return report


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def _is_safetensors(path: str) -> bool:
    return path.endswith(".safetensors")


def read_safetensors(path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file (the format of timm's and Hugging Face's weight files), read
    without the ``safetensors`` package: an 8-byte little-endian header length, a JSON header naming each
    tensor's dtype, shape and byte range, then the bytes."""
    import json
    import struct

    with open(path, "rb") as file:
        data = file.read()
    if len(data) < 8:
        raise ValueError("too short for a safetensors file")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ValueError("its header runs past the end of the file")
    header = json.loads(data[8 : 8 + length])
    body = memoryview(data)[8 + length :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"tensor {name!r} has the unsupported dtype {entry['dtype']}")
        start, end = entry["data_offsets"]
        if not 0 <= start <= end <= len(body):
            raise ValueError(f"tensor {name!r} lies outside the file")
        flat = torch.frombuffer(bytearray(body[start:end]), dtype=dtype) if end > start else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(entry["shape"])  # safetensors stores little-endian, as x86 and ARM are
    return tensors


def _unwrap_state_dict(state, where: str) -> dict[str, torch.Tensor]:
    if isinstance(state, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in state and isinstance(state[wrapper], Mapping):
                state = state[wrapper]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"backbone weights: {where} does not hold a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}
