"""Training: strategies, precision, the fit loop with checkpoints and validation metrics."""

from hpa_tf.training.strategy import get_strategy, precision_policy
from hpa_tf.training.train import train
from hpa_tf.training.validation import ValidationMetrics, image_label_metrics

__all__ = ["ValidationMetrics", "get_strategy", "image_label_metrics", "precision_policy", "train"]
