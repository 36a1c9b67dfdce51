"""Training and evaluation loops."""

from .evaluate import EvaluationResult, evaluate

__all__ = ["EvaluationResult", "evaluate"]
