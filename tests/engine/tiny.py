"""A training configuration small enough for unit tests: seconds per run on one CPU core."""

from sst_fast.engine.runconfig import load_run_config

TINY = [
    "data.options.image_size=64",
    "data.options.train_images=160",
    "data.options.val_images=60",
    "data.val_fraction=0.25",
    "data.val_episodes=8",
    "model.image_size=[64, 64]",
    "model.channels=8",
    "model.dropout=0.1",
    "optim.batch_size=4",
    "optim.episodes_per_epoch=12",
    "optim.epochs=2",
    "run.log_every=1",
    "run.checkpoint_every=1000",
]


def tiny_config(*overrides):
    """The synthetic configuration shrunk by :data:`TINY`, then ``overrides``."""
    return load_run_config("synthetic", [*TINY, *overrides])
