"""Multi-label stratified folds (iterative stratification), one fold number per image ID."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hpa_tf.labels import to_multi_hot


def assign_folds(ids: Sequence[str], labels: Sequence[Sequence[int]], n_folds: int, seed: int = 0) -> dict[str, int]:
    """Fold of each ID so that every class is spread evenly over the folds.

    >>> assign_folds(["a", "b"], [[0], [1]], 1)
    {'a': 0, 'b': 0}
    """
    if n_folds <= 1 or len(ids) < n_folds:
        if n_folds > 1:
            raise ValueError(f"{len(ids)} images cannot make {n_folds} folds; use --folds {max(len(ids), 1)} or fewer")
        return {i: 0 for i in ids}
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    y = np.stack([to_multi_hot(list(lab)) for lab in labels])
    folds = np.zeros(len(ids), np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(ids)), y)):
        folds[held_out] = k
    return dict(zip(ids, folds.tolist()))
