"""Per-cell labels from image labels, out of fold: the winners' pseudo-label loop.

    python -m hpa_tf.pseudo --records runs/demo/records --out runs/demo/records/pseudo/round1 \\
        --models runs/demo/round0/image/split0 runs/demo/round0/image/split1 \\
                 runs/demo/round0/cells/split0 runs/demo/round0/cells/split1 [--truth runs/demo/synth/truth]

Then ``train_tpu.py --config demo_cpu_cell --set data.cell_labels=runs/demo/records/pseudo/round1``
trains a single-cell model on them (:mod:`hpa_tf.models.cell`); its out-of-fold splits label the next
round. :mod:`oof` (the out-of-fold run), :mod:`soft` (the rule), :mod:`~hpa_tf.data.cell_labels` (the
files), :mod:`quality` (against the truth).
"""

from hpa_tf.pseudo.oof import SOURCES, label, plan_splits
from hpa_tf.pseudo.soft import naive_labels, soft_labels
from hpa_tf.data.cell_labels import CellLabels

__all__ = ["SOURCES", "CellLabels", "label", "naive_labels", "plan_splits", "soft_labels"]
