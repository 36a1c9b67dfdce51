"""Training, evaluation and experiments.

- :func:`load_run_config` / :class:`RunConfig`: a run's configuration (YAML + overrides).
- :class:`Trainer` / :func:`train`: episodic training with checkpoints, validation and exact resume.
- :func:`load_checkpoint`, :func:`model_from_checkpoint`: checkpoints back to models.
- :func:`evaluate`: the few-shot protocol on a fold's novel classes.
"""

from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from .evaluate import EvaluationResult, evaluate, score_episodes
from .runconfig import ConfigError, RunConfig, load_run_config
from .train import Trainer, TrainingError, TrainResult, train

__all__ = [
    "CheckpointError",
    "ConfigError",
    "EvaluationResult",
    "RunConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "evaluate",
    "load_checkpoint",
    "load_run_config",
    "model_from_checkpoint",
    "save_checkpoint",
    "score_episodes",
    "train",
]
