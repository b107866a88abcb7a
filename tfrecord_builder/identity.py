"""What a record set is made from (its :mod:`hpa_tf.provenance` record): the labels of every image,
the content of every image file and of the segmenter's files, the build settings and the folds.

Two builds with the same ``made_from`` give the same records, so a folder whose recorded fingerprint
differs holds another record set: records are never patched in place (a changed label, image list
or fold count is a new record set).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from hpa_tf import fs
from hpa_tf.data.schema import SCHEMA_VERSION
from hpa_tf.provenance import digest, quick_file_digest
from tfrecord_builder.folds import groups_of
from tfrecord_builder.build import BuildConfig, ImageJob


def _image_files(folder: str, ids: set[str]) -> list[str]:
    """The files of ``folder`` that belong to one of ``ids`` (``{ID}_{channel}.{ext}``)."""
    return [n for n in fs.listdir(folder) if n.rpartition("_")[0] in ids]


def _folder_digest(folder: str, names: Sequence[str], what: str, progress: bool = True) -> str:
    """A digest of the content of the files ``names`` of ``folder``."""
    paths = [fs.join(folder, n) for n in names]
    with ThreadPoolExecutor(16) as pool:  # a stat and two reads per file: latency-bound on gs://
        digests = list(tqdm(pool.map(quick_file_digest, paths), total=len(paths), desc=f"fingerprinting {what}",
                            unit="file", disable=not progress or len(paths) < 200, leave=False))
    return digest(sorted(zip(names, digests)))


def segmenter_files(spec: str) -> dict[str, str]:
    """The digest of every file or folder a segmenter spec names (``key=PATH`` values, a
    ``precomputed:DIR``): new model files or masks make a new record set.

    >>> segmenter_files("classical")
    {}
    """
    values = []
    if spec.startswith("precomputed:"):
        values.append(spec.split(":", 1)[1])
    elif ":" in spec:
        values += [item.partition("=")[2] for item in spec.split(":", 1)[1].split(",")]
    out = {}
    for value in values:
        if not value or not fs.exists(value):
            continue
        if fs.isdir(value):
            out[value.rstrip("/").rsplit("/", 1)[-1]] = _folder_digest(value, fs.listdir(value), "masks")
        else:
            out[value.rsplit("/", 1)[-1]] = quick_file_digest(value)
    return out


def records_made_from(config: BuildConfig, jobs: Sequence[ImageJob], n_folds: int, progress: bool = True,
                      group_by: str = "antibody") -> dict:
    """The ``made_from`` of the record set ``config`` and ``jobs`` build with ``n_folds`` folds, the
    images of a group (``group_by``: :mod:`tfrecord_builder.folds`) in one fold."""
    sources = {}
    for name, data, _ in config.sources:  # keyed so that a refusal names what changed: labels, image list, files
        mine = [j for j in jobs if j.source == name]
        files = _image_files(data, {j.image_id for j in mine})
        sources[name] = {"labels": digest(sorted((j.image_id, sorted(j.labels)) for j in mine)),
                         "image_list": digest(sorted(files)),
                         "image_files": _folder_digest(data, files, f"source {name}", progress)}
    settings = {k: v for k, v in config.to_dict().items() if k != "sources"}
    folds = {"n_folds": n_folds, "seed": config.seed}
    groups = groups_of([j.image_id for j in jobs], group_by)
    if groups:  # only when grouping moves images: records of ungrouped IDs stay current
        folds["groups"] = digest(sorted(groups.items()))
    return {"schema": SCHEMA_VERSION, "sources": sources, "settings": settings,
            "segmenter_files": segmenter_files(config.segmenter), "folds": folds}
