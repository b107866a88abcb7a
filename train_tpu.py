#!/usr/bin/env python
"""``train_tpu.py`` of the design card: a thin wrapper of ``python -m hpa_tf.train`` (see its --help)."""

import sys

from hpa_tf.cli import run
from hpa_tf.train import main

if __name__ == "__main__":
    sys.exit(run(main))
