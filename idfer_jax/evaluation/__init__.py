"""Evaluation on arrays: metrics, identity/pose leakage probes, plots and reports.

This package works on numpy/JAX arrays only and never imports ``models``, ``methods`` or ``train``.
"""

from idfer_jax.evaluation.metrics import (
    ConfusionAccumulator,
    chance_accuracy,
    confusion_matrix,
    masked_accuracy,
    mean_and_std,
    r2_score,
)
from idfer_jax.evaluation.plots import (
    plot_attention_maps,
    plot_confusion_matrix,
    plot_leakage_bars,
    plot_reconstructions,
)
from idfer_jax.evaluation.probes import (
    RidgeFit,
    fit_ridge,
    identity_leakage,
    linear_probe_accuracy,
    mlp_probe_accuracy,
    pose_leakage,
    ridge_r2,
    select_ridge_alpha,
    split_within_subjects,
    standardize,
)
from idfer_jax.evaluation.report import (
    comparison_table,
    format_leakage,
    markdown_table,
    write_confusion_csv,
    write_csv,
    write_report,
)

__all__ = [
    "ConfusionAccumulator",
    "chance_accuracy",
    "RidgeFit",
    "comparison_table",
    "confusion_matrix",
    "fit_ridge",
    "format_leakage",
    "identity_leakage",
    "linear_probe_accuracy",
    "markdown_table",
    "masked_accuracy",
    "mean_and_std",
    "mlp_probe_accuracy",
    "plot_attention_maps",
    "plot_confusion_matrix",
    "plot_leakage_bars",
    "plot_reconstructions",
    "pose_leakage",
    "r2_score",
    "ridge_r2",
    "select_ridge_alpha",
    "split_within_subjects",
    "standardize",
    "write_confusion_csv",
    "write_csv",
    "write_report",
]
