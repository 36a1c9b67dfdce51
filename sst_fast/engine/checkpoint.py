"""Checkpoints: written atomically, read back with a clear error, turned into a ready model.

A checkpoint is one ``torch.save`` file holding the run configuration, the model's ``state_dict``
and, for a training checkpoint, everything needed to continue exactly: optimiser, step, epoch,
position in the epoch, RNG states, the best validation score and the log so far.

Since format 2 a checkpoint also holds the SHA-256 of its content (every tensor's bytes, dtype and
shape, every other value, in order): ``torch.load`` reads a file whose tensor bytes were changed on disk
without complaint, so :func:`load_checkpoint` recomputes the digest and refuses a damaged file. The file
stays a plain ``torch.save`` file that ``torch.load`` reads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from ..config import SSTConfig
from ..files import write_atomic

FORMAT = 2
READABLE_FORMATS = (1, 2)  # 1: without the content digest
KIND = "sst_fast-checkpoint"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, damaged, or not an sst_fast checkpoint."""


def save_checkpoint(path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus the format tag) to ``path`` atomically: a crash during the write leaves the
    previous file intact."""
    state = {"kind": KIND, "format": FORMAT, **state}
    state["sha256"] = content_digest(state)
    return write_atomic(path, lambda file: torch.save(state, file))


def content_digest(state) -> str:
    """The SHA-256 of a checkpoint's content: tensors by dtype, shape and bytes; containers in order; other
    values by type and ``repr`` (exact for the ints, floats, strings and None that checkpoints hold)."""
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in state.items() if key != "sha256"})
    return digest.hexdigest()


def _feed(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"V{type(value).__name__}:{value!r};".encode())


def checkpoint_file(path) -> Path:
    """The checkpoint file that ``path`` names: a file as it is; a run folder's ``checkpoints/best.pt``, or its
    ``checkpoints/last.pt`` when it has no best one yet (see :func:`fell_back_to_last`); a CheckpointError for a
    folder with neither."""
    path = Path(path)
    if not path.is_dir():
        return path
    for candidate in (path / "checkpoints" / "best.pt", path / "checkpoints" / "last.pt"):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"checkpoint: {path} is a folder without checkpoints/best.pt or checkpoints/last.pt")


def fell_back_to_last(given, resolved) -> str | None:
    """A note for the user when the run folder ``given`` resolved to its ``last.pt`` (it has no ``best.pt``:
    no validation has finished), else None."""
    given, resolved = Path(given), Path(resolved)
    if not given.is_dir() or resolved.name != "last.pt":
        return None
    return (
        f"{given} has no checkpoints/best.pt (no validation has finished yet): "
        f"using its latest state, checkpoints/last.pt"
    )


def load_checkpoint(path, map_location="cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (a file, or a run folder: see
    :func:`checkpoint_file`); any problem is a :class:`CheckpointError` naming the file and what is wrong with it."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: {path} does not exist")
    try:
        # weights_only: a checkpoint is data, never code to run; it holds only tensors and plain containers.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a damaged file fails in many ways (zip, unpickler, struct, storage errors)
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = f"{type(error).__name__}: {message}" if message else type(error).__name__
        raise CheckpointError(f"checkpoint: {path} is not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise CheckpointError(f"checkpoint: {path} is not an sst_fast checkpoint")
    if state.get("format") not in READABLE_FORMATS:
        raise CheckpointError(
            f"checkpoint: {path} has format {state.get('format')!r}; this version reads formats {READABLE_FORMATS}"
        )
    if state["format"] >= 2 and state.get("sha256") != content_digest(state):
        raise CheckpointError(f"checkpoint: {path} is damaged (its content does not match the SHA-256 saved with it)")
    config = state.get("config")
    if not isinstance(state.get("model"), dict) or not isinstance(config, dict):
        raise CheckpointError(f"checkpoint: {path} lacks its model weights or its configuration")
    if not all(isinstance(config.get(section), dict) for section in ("data", "model", "optim", "run")):
        raise CheckpointError(f"checkpoint: {path} has an incomplete configuration")
    state["path"] = str(path)
    return state


def saved_config(state: dict[str, Any]) -> dict[str, Any]:
    """The run configuration of a checkpoint state as it must be read today (a copy; the state stays as
    saved): a checkpoint from before ``SSTConfig.tune_form`` existed took the paper's step, whatever the
    default is now."""
    config = {section: dict(values) for section, values in state["config"].items()}
    config["model"].setdefault("tune_form", "paper")
    return config


def model_from_checkpoint(checkpoint, device="cpu", fast: bool = True, **config_overrides) -> torch.nn.Module:
    """The model of a checkpoint (a path, a run folder, or a state from :func:`load_checkpoint`), in eval mode.

    ``config_overrides`` change settings that do not alter the parameters (e.g. ``fusion``,
    ``tune_step``); ``fast=False`` builds the reference model instead of :class:`sst_fast.SST`. The model's
    ``trained_on`` (``{"dataset", "fold"}`` of its training run) lets :func:`~sst_fast.engine.evaluate` refuse
    test classes it trained on.
    """
    from ..models import SST, SSTReference

    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    values = saved_config(state)["model"]
    # The backbone's weights are in the state dict: never reread the original file (it may be gone).
    values["backbone_weights"] = None
    values.update(config_overrides)
    try:
        config = SSTConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint: {state.get('path', '<state>')}: {error}") from None
    model = (SST if fast else SSTReference)(config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint: {state.get('path', '<state>')} does not fit its model ({first})") from None
    # What it learned from, for the evaluation's check that the test classes are new to it.
    data = state["config"]["data"]
    model.trained_on = {"dataset": data.get("dataset"), "fold": data.get("fold")}
    return model.to(device).eval()
