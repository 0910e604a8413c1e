"""Evaluation: retrieval and classification metrics (other eval modules are imported by their full path)."""

from fgia.eval.metrics import (
    average_precision,
    evaluate_rankings,
    evaluate_retrieval,
    mean_average_precision,
    mean_per_class_accuracy,
    ranking_metrics,
    topk_accuracy,
)

__all__ = [
    "average_precision",
    "evaluate_rankings",
    "evaluate_retrieval",
    "mean_average_precision",
    "mean_per_class_accuracy",
    "ranking_metrics",
    "topk_accuracy",
]
