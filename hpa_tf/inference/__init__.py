"""Prediction: segment test images, score every cell with every model, combine, TTA.

The CPU half (:mod:`prepare`, no TensorFlow) runs in worker processes; :class:`~.predictor.Predictor` runs
the models; :mod:`runner` drives a folder and writes the submission.
"""

from hpa_tf.inference.combine import RULES, Combination, ModelScores, combine
from hpa_tf.inference.prepare import Prepared, PrepareSpec, prepare_array, prepare_image
from hpa_tf.inference.tta import TTA_MODES

__all__ = ["RULES", "TTA_MODES", "Combination", "ModelScores", "PrepareSpec", "Prepared", "combine", "prepare_array", "prepare_image"]
