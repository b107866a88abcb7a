#!/usr/bin/env python
"""``predict.py`` of the design card: a thin wrapper of ``python -m hpa_tf.predict`` (see its --help)."""

import sys

from hpa_tf.cli import run
from hpa_tf.predict import main

if __name__ == "__main__":
    sys.exit(run(main))
