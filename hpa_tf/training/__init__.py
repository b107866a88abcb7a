"""Training: strategies, precision, the distributed step loop, backups and validation metrics."""

from hpa_tf.training.metrics import image_label_metrics, metrics_from_histograms
from hpa_tf.training.strategy import get_strategy, is_chief, precision_policy
from hpa_tf.training.train import TrainingError, save_model, train

__all__ = ["TrainingError", "get_strategy", "image_label_metrics", "is_chief", "metrics_from_histograms",
           "precision_policy", "save_model", "train"]
