"""Index a dataset: which image IDs exist and their image-level labels.

Three table layouts are recognised by their header:
- 2021 competition ``train.csv``: ``ID,Label`` with labels ``0|5|16``;
- 2018 competition ``train.csv``: ``Id,Target`` with labels ``0 5 16`` of the 2018 competition's 28
  classes, mapped to the 19 of 2021 by class (:data:`hpa_tf.labels.MAP_2018_TO_2021`); a label with
  no 2021 class is dropped, an image left with no label is left out, and both are reported in
  ``table.attrs["label_report"]``;
- external HPA data ``kaggle_2021.tsv``: ``Image`` (a URL base such as
  ``https://images.proteinatlas.org/10005/921_B9_1``), ``Label_idx``, and optionally
  ``Cellline``, ``in_trainset``. The ID is the URL's last two path parts joined by ``_``
  (``10005_921_B9_1``), the name the usual download scripts give the files. As published, the
  file is comma-separated despite its name (header ``Image,Gene,Cellline,Label,in_trainset,Label_idx``)
  and rows whose locations have no 2021 class have an empty ``Label_idx``: those rows are skipped and
  counted in ``table.attrs["label_report"]``.

The separator (comma or tab) is read from the header line, whatever the file's extension.
"""

from __future__ import annotations

import io as _io

import pandas as pd

from hpa_tf import fs
from hpa_tf.io.images import CHANNELS, image_extension
from hpa_tf.labels import CLASSES_2018, convert_2018, format_labels, parse_labels


class LabelTableError(ValueError):
    """A label table that cannot be indexed; the message names the file and the row."""


def _external_id(url: str) -> str:
    parts = [p for p in str(url).rstrip("/").split("/") if p]
    return "_".join(parts[-2:]) if len(parts) >= 2 else parts[-1]


def _separator(text: str) -> str:
    """The column separator of a table, from its header line: the published ``kaggle_2021.tsv`` is
    comma-separated despite its name, and a tab-separated copy must read too.

    >>> _separator("Image,Gene,Label_idx"), _separator(chr(9).join(["Image", "Label_idx"])) == chr(9)
    (',', True)
    """
    header = text.split("\n", 1)[0]
    return "\t" if header.count("\t") > header.count(",") else ","


def read_label_table(path: str, classes: str = "auto") -> pd.DataFrame:
    """Read a label table in any of the three layouts -> columns ``ID``, ``Label`` (2021 form), ``labels``.

    Extra columns (``Cellline``, ``in_trainset``...) are kept. ``classes``: ``auto`` (2018 classes
    for an ``Id,Target`` table, else 2021), ``2021`` or ``2018`` to say so.

    >>> df = read_label_table("data/train.csv")  # doctest: +SKIP
    >>> df.loc[0, "Label"], df.loc[0, "labels"]  # doctest: +SKIP
    ('0|5', [0, 5])
    """
    text = fs.read_text(path)
    sep = _separator(text)
    try:
        df = pd.read_csv(_io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except Exception as err:
        raise LabelTableError(f"{path}: cannot be read as a table ({err})") from err
    cols = set(df.columns)
    external_report = ""
    if {"ID", "Label"} <= cols:
        id_col, label_col = "ID", "Label"
    elif {"Id", "Target"} <= cols:
        id_col, label_col = "Id", "Target"
    elif {"Image", "Label_idx"} <= cols:
        df["ID"] = df["Image"].map(_external_id)
        id_col, label_col = "ID", "Label_idx"
        unlabelled = df["Label_idx"].str.strip() == ""
        if unlabelled.any():  # locations with no 2021 class: the published list has many
            external_report = (f"{path}: {int(unlabelled.sum())} of {len(df)} rows have no 2021 class (empty "
                               "Label_idx) and are skipped")
            df = df[~unlabelled.to_numpy()].reset_index(drop=True)
    else:
        raise LabelTableError(
            f"{path}: unknown header {list(df.columns)}; expected 'ID,Label' (2021), "
            "'Id,Target' (2018) or the kaggle_2021.tsv columns 'Image,...,Label_idx'"
        )
    ids = df[id_col].str.strip()
    if (ids == "").any():
        line = int((ids == "").to_numpy().argmax()) + 2
        raise LabelTableError(f"{path}: line {line} has an empty ID")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise LabelTableError(f"{path}: ID {dup.iloc[0]!r} appears more than once")
    if classes not in ("auto", "2021", "2018"):
        raise ValueError(f"classes must be 'auto', '2021' or '2018', not {classes!r}")
    is_2018 = classes == "2018" or (classes == "auto" and label_col == "Target")
    if not is_2018:
        labels = [parse_labels(v, row=f"{path} ID {i}") for i, v in zip(ids, df[label_col])]
        report = external_report
    else:
        labels, report = _from_2018(path, ids, df[label_col])
    out = df.drop(columns=[c for c in (id_col, label_col, "ID", "Label") if c in df.columns])
    out.insert(0, "ID", ids.to_numpy())
    out.insert(1, "Label", [format_labels(v) for v in labels])
    out.insert(2, "labels", labels)
    if is_2018:
        out.insert(3, "Label_2018", df[label_col].to_numpy())
        out = out[[bool(v) for v in labels]]
    out = out.reset_index(drop=True)
    out.attrs["label_report"] = report
    return out


def _from_2018(path: str, ids: pd.Series, values: pd.Series) -> tuple[list[list[int]], str]:
    """2021 labels of a 2018 table, and a report of what could not be kept."""
    labels, dropped, emptied = [], {}, []
    for image_id, value in zip(ids, values):
        new, lost = convert_2018(parse_labels(value, row=f"{path} ID {image_id}", n_classes=len(CLASSES_2018)))
        labels.append(new)
        for c in lost:
            dropped[c] = dropped.get(c, 0) + 1
        if not new:
            emptied.append(image_id)
    report = f"{path}: 2018 competition classes, mapped to the 2021 classes by class"
    if dropped:
        report += "; labels with no 2021 class dropped: " + ", ".join(
            f"{CLASSES_2018[c]} ({c}) x {n}" for c, n in sorted(dropped.items()))
    if emptied:
        shown = ", ".join(emptied[:5]) + (", ..." if len(emptied) > 5 else "")
        report += f"; {len(emptied)} image(s) with no label left are left out: {shown}"
    return labels, report


def scan_image_ids(data_dir: str, complete: bool = True) -> list[str]:
    """IDs of the images in a folder that have all four channel files (a test folder has no CSV);
    ``complete=False``: every ID with any channel file (to report the incomplete ones).

    >>> scan_image_ids("data/test")  # doctest: +SKIP
    ['0040581b-f1f2-4fbe-b043-b6bfea5404bb', ...]
    """
    seen: dict[str, set[str]] = {}
    for name in fs.listdir(data_dir):
        ext = image_extension(name)  # any letter case: .png, .TIF, .Png
        if ext is None:
            continue
        image_id, _, color = name[: -len(ext)].rpartition("_")
        if color in CHANNELS and image_id:
            seen.setdefault(image_id, set()).add(color)
    return sorted(i for i, colors in seen.items() if len(colors) == len(CHANNELS) or not complete)


def index_dataset(data_dir: str, labels_path: str | None = None) -> pd.DataFrame:
    """Index a dataset folder: its label table when given, else every complete image in it.

    Without labels the ``Label``/``labels`` columns are empty. An ID in the table that has no
    files is reported at read time (with the missing channel), not here: a ``stat`` per file is
    slow on ``gs://``.

    >>> index_dataset("synth/train", "synth/train.csv").columns[:3].tolist()  # doctest: +SKIP
    ['ID', 'Label', 'labels']
    """
    if labels_path is not None:
        return read_label_table(labels_path)
    ids = scan_image_ids(data_dir)
    return pd.DataFrame({"ID": ids, "Label": [""] * len(ids), "labels": [[] for _ in ids]})
