"""Multi-label stratified folds (iterative stratification), one fold number per image ID, with the
fields of one antibody (or of one well) kept in one fold.

Fields of one well show the same protein with the same antibody, and one antibody's wells the same
protein: their labels are the same and they look alike. Spread over folds, a model validates on
near-copies of its training images, and an out-of-fold labeller labels near-copies of what it
learnt: both look better than they are. HPA's public images (the external data of the 2021
competition) carry the antibody, plate, well and field in their IDs (``{antibody}_{plate}_{well}_{field}``,
e.g. ``10580_1610_C1_1``, as the label-table reader (``hpa_tf.io.read_label_table``) names them); other IDs that end in
``_{well}_{field}`` (e.g. ``B2AI_1_untreated_A1_R1``) group by well; any other ID (the competition's
UUIDs) is a group of its own.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from hpa_tf.labels import to_multi_hot

GROUPINGS = ("antibody", "well", "none")
_HPA_PUBLIC = re.compile(r"^(?P<antibody>\d+)_(?P<plate>\d+)_(?P<well>[A-P]\d{1,2})_(?P<field>\d+)$")
_WELL_FIELD = re.compile(r"^(?P<well>.+_[A-P]\d{1,2})_[A-Za-z]{0,2}\d+$")


def group_of(image_id: str, group_by: str = "antibody") -> str:
    """The group an image's fold follows: its antibody or well when its ID says, else the ID itself.

    >>> group_of("10580_1610_C1_1"), group_of("10580_1610_C1_1", "well"), group_of("B2AI_1_untreated_A1_R1")
    ('antibody 10580', 'well 10580_1610_C1', 'well B2AI_1_untreated_A1')
    >>> group_of("5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0") == "5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0"
    True
    """
    if group_by not in GROUPINGS:
        raise ValueError(f"group_by {group_by!r} is not one of {', '.join(GROUPINGS)}")
    if group_by == "none":
        return image_id
    hpa = _HPA_PUBLIC.match(image_id)
    if hpa:
        return f"antibody {hpa['antibody']}" if group_by == "antibody" else f"well {hpa['antibody']}_{hpa['plate']}_{hpa['well']}"
    well = _WELL_FIELD.match(image_id)
    return f"well {well['well']}" if well else image_id


def groups_of(ids: Sequence[str], group_by: str = "antibody") -> dict[str, str] | None:
    """ID -> group for the IDs that share a group with another, or None when every image is alone."""
    groups = {i: group_of(i, group_by) for i in ids}
    sizes = Counter(groups.values())
    shared = {i: g for i, g in groups.items() if sizes[g] > 1}
    return shared or None


def assign_folds(ids: Sequence[str], labels: Sequence[Sequence[int]], n_folds: int, seed: int = 0,
                 group_by: str = "antibody") -> dict[str, int]:
    """Fold of each ID so that every class is spread evenly over the folds and the images of one
    group (:func:`group_of`) share a fold: the groups are stratified, each by the union of its
    images' labels.

    >>> assign_folds(["a", "b"], [[0], [1]], 1)
    {'a': 0, 'b': 0}
    >>> folds = assign_folds(["7_1_A1_1", "7_1_A1_2", "8_1_B2_1", "9_1_C3_1"], [[0], [0], [1], [2]], 2)
    >>> folds["7_1_A1_1"] == folds["7_1_A1_2"]
    True
    """
    if n_folds <= 1 or len(ids) < n_folds:
        if n_folds > 1:
            raise ValueError(f"{len(ids)} images cannot make {n_folds} folds; use --folds {max(len(ids), 1)} or fewer")
        return {i: 0 for i in ids}
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    keys = [group_of(i, group_by) for i in ids]
    names = sorted(set(keys))
    if len(names) < n_folds:
        raise ValueError(f"{len(ids)} images in {len(names)} groups ({group_by}) cannot make {n_folds} folds; use "
                         f"--folds {len(names)} or fewer, or --group-by none")
    row = {g: k for k, g in enumerate(names)}
    y = np.zeros((len(names), 19), np.float32)
    for key, lab in zip(keys, labels):
        y[row[key]] = np.maximum(y[row[key]], to_multi_hot(list(lab)))
    group_fold = np.zeros(len(names), np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(names)), y)):
        group_fold[held_out] = k
    return {i: int(group_fold[row[key]]) for i, key in zip(ids, keys)}
