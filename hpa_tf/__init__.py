"""hpa-tf: single-cell protein localisation for the Human Protein Atlas with TensorFlow/Keras."""

import os as _os

# TensorFlow's C++ start-up chatter hides our progress bars; a user's own setting wins.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
