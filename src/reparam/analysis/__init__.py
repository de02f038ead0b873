"""Analysis of trained and deployed models: identity variance per block (RepOptimizer fig. 4),
and the weight and output statistics that explain INT8 results (``reparam report`` draws them:
``reparam.app.report``).
"""

from reparam.analysis.identity import identity_variance_ratios
from reparam.analysis.quant_stats import layer_stats, output_metrics, weight_stats

__all__ = [
    "identity_variance_ratios",
    "layer_stats",
    "output_metrics",
    "weight_stats",
]
