"""``python -m tfrecord_builder inspect OUT``: the manifest in a few lines, and a contact sheet of
a few image records (cell outlines from their masks) each with a strip of its cell crops."""

from __future__ import annotations

import json

import cv2
import numpy as np

from hpa_tf import fs, viz
from hpa_tf.data.schema import parse_cell_record, parse_image_record
from hpa_tf.labels import CLASS_NAMES
from tfrecord_builder.shards import MANIFEST, check_file

TILE = 256


def _records(out: str, files: list[dict], compression: str, parse, n: int) -> list[dict]:
    import tensorflow as tf

    paths = [fs.join(out, f["file"]) for f in files]
    ds = tf.data.TFRecordDataset(paths, compression_type=compression).take(n).map(parse)
    try:
        return [{k: v.numpy() for k, v in ex.items()} for ex in ds]
    except tf.errors.OpError as err:
        raise ValueError(f"{out}: a shard is corrupt ({err.message.splitlines()[0]}); `inspect --verify` names it, "
                         "rerunning the build command with --verify rebuilds it") from err


def check_shards(out: str, manifest: dict, verify: bool = False) -> list[str]:
    """What does not match the manifest: a missing or truncated shard (sizes: cheap), with
    ``verify`` also another sha256 or record count (reads everything)."""
    problems = []
    compression = manifest["config"]["compression"]
    for entry in manifest["shards"]["images"] + manifest["shards"]["cells"]:
        problem = check_file(out, entry, verify)
        if not problem and verify:
            import tensorflow as tf

            path = fs.join(out, entry["file"])
            try:
                count = sum(1 for _ in tf.data.TFRecordDataset(path, compression_type=compression))
            except tf.errors.OpError as err:
                count, problem = -1, f"{path}: unreadable records ({err.message.splitlines()[0]})"
            if not problem and count != entry["examples"]:
                problem = f"{path} holds {count} records, the manifest says {entry['examples']}"
        if problem:
            problems.append(problem)
    return problems


def inspect(out: str, png: str | None = None, n: int = 6, verify: bool = False) -> int:
    """Print the summary and write the sheet; returns a process exit code."""
    path = fs.join(out, MANIFEST)
    if not fs.exists(path):
        raise FileNotFoundError(f"{path} not found: is {out!r} a finished build?")
    m = json.loads(fs.read_text(path))
    problems = check_shards(out, m, verify)
    if problems:
        raise ValueError(f"{out}: {len(problems)} shard(s) do not match the manifest: " + "; ".join(problems[:3])
                         + " - rerun the same build command: it rebuilds them")
    c, cfg = m["counts"], m["config"]
    print(f"{out}: schema v{m['schema_version']}, {c['images']} images, {c['cells']} cells, {c['errors']} errors, "
          f"{c['shards']} shards of each kind, " + ("checksums and counts verified" if verify else "sizes checked"))
    sources = ", ".join(f"{name} ({data}, {m.get('sources', {}).get(name, {}).get('images', 0)} images)"
                        for name, data, _ in cfg.get("sources") or [["main", cfg.get("data"), ""]])
    print(f"  built from {sources} with segmenter {cfg['segmenter']}, images {cfg['image_size']} px, "
          f"cells {cfg['cell_size']} px, compression {cfg['compression'] or 'none'}")
    print("  folds: " + ", ".join(f"{k}: {v}" for k, v in m["folds"]["images_per_fold"].items()))
    freq = sorted(m["class_frequencies"].items(), key=lambda kv: -kv[1])
    print("  images per class: " + ", ".join(f"{name} {count}" for name, count in freq if count))
    sizes = [f["bytes"] / 1e6 for f in m["shards"]["images"] + m["shards"]["cells"]]
    print(f"  shard sizes: {min(sizes):.1f} to {max(sizes):.1f} MB")
    images = _records(out, m["shards"]["images"], cfg["compression"], parse_image_record, n)
    cells = {r["id"]: r for r in _records(out, m["shards"]["cells"], cfg["compression"], parse_cell_record, n)}
    rows = []
    for rec in images:
        tile = cv2.resize(rec["image"], (TILE, TILE), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(rec["mask"], (TILE, TILE), interpolation=cv2.INTER_NEAREST)
        left = viz.draw_cells(viz.composite(tile), mask, None, 1, False)
        names = ", ".join(CLASS_NAMES[k] for k in np.flatnonzero(rec["labels"]))
        cv2.putText(left, names[:40], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        strip = np.zeros((TILE, TILE * 2, 3), np.uint8)
        crops = cells.get(rec["id"], {}).get("cells", [])[:8]
        for k, data in enumerate(crops):
            crop = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., [2, 1, 0, 3]]
            y, x = divmod(k, 4)
            strip[y * 128 : (y + 1) * 128, x * 128 : (x + 1) * 128] = cv2.resize(viz.composite(crop), (128, 128))
        rows.append(np.hstack([left, strip]))
    target = png or fs.join(out, "contact_sheet.png")
    if rows:
        viz.write_png(target, np.vstack(rows))
        print(f"  contact sheet: {target}")
    return 0
