"""Verification evaluation: the protocol, model embedders, masked pair sets, reports, CLI.

Torch-free; nothing heavy is imported here (a checkpoint's torch is imported only when one is
evaluated).
"""

from .verification import (
    THRESHOLDS,
    RoutedDistances,
    VerificationResult,
    evaluate_distances,
    kfold_accuracy,
    kfold_accuracy_per_extractor,
    pair_distances,
    roc_curve,
    tar_at_far,
)

__all__ = [
    "THRESHOLDS",
    "RoutedDistances",
    "VerificationResult",
    "evaluate",
    "evaluate_distances",
    "kfold_accuracy",
    "kfold_accuracy_per_extractor",
    "pair_distances",
    "roc_curve",
    "tar_at_far",
]


def evaluate(*args, **kwargs):
    """``insightface_bfm.evaluation.run.evaluate`` (imported on first use)."""
    from .run import evaluate as run

    return run(*args, **kwargs)
