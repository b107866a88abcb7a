"""TFRecord builder speed on one core from 2048 px SynthHPA PNGs, by stage (read+decode,
segmentation, resize+crop, encode, shard write), against the floor of reading and decoding the
four PNGs alone; and how fast the shards read back through tf.data."""

from __future__ import annotations

import tempfile
import time

import cv2

from hpa_tf.io import read_image
from hpa_tf.segmentation import get_segmenter, write_masks
from hpa_tf.synthetic.writer import make_one
from tfrecord_builder.build import BuildConfig, ImageJob, build_example
from tfrecord_builder.shards import write_shard


def _read_back(out: str, kind: str, parse) -> float:
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(tf.io.gfile.glob(f"{out}/{kind}-*.tfrec")).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    for _ in ds:  # warm-up pass: file cache, graph tracing
        pass
    t = time.perf_counter()
    n = sum(1 for _ in ds)
    return n / (time.perf_counter() - t)


def run(quick: bool = False) -> dict:
    from hpa_tf.data.schema import parse_cell_record, parse_image_record

    cv2.setNumThreads(1)
    n = 3 if quick else 10
    out: dict = {"images": n, "size_px": 2048}
    with tempfile.TemporaryDirectory() as d:
        rows = [make_one((d, 21, i, "train", 2048)) for i in range(n)]
        jobs = [ImageJob(r["ID"], tuple(int(x) for x in r["Label"].split("|")), 0) for r in rows]
        data = f"{d}/train"
        t = time.perf_counter()
        for j in jobs:
            read_image(data, j.image_id)
        floor = (time.perf_counter() - t) / n
        seg = get_segmenter("classical")
        for j in jobs:
            write_masks(f"{d}/masks", j.image_id, seg.segment([read_image(data, j.image_id)])[0])
        for name, segmenter in (("precomputed_masks", f"precomputed:{d}/masks"), ("classical_segmentation", "classical")):
            config = BuildConfig((("main", data, ""),), segmenter)
            build_example(config, jobs[0])  # warm-up: imports, segmenter construction
            t = time.perf_counter()
            built = [build_example(config, j) for j in jobs]
            t_build = time.perf_counter() - t
            t = time.perf_counter()
            write_shard(f"{d}/out_{name}", 0, 1, built, "")
            t_write = time.perf_counter() - t
            per_image = (t_build + t_write) / n
            stages = {k: sum(b.timings[k] for b in built) / n for k in built[0].timings}
            out[name] = {"s_per_image": per_image, "images_per_s_per_core": 1 / per_image,
                         "ratio_to_read_decode_floor": floor / per_image,
                         **{f"{k}_s": v for k, v in stages.items()}, "shard_write_s": t_write / n}
        out["read_decode_floor_s_per_image"] = floor
        out["read_decode_floor_images_per_s"] = 1 / floor
        out["readback_images_per_s"] = _read_back(f"{d}/out_precomputed_masks", "images", parse_image_record)
        out["readback_cell_records_per_s"] = _read_back(f"{d}/out_precomputed_masks", "cells", parse_cell_record)
    cv2.setNumThreads(-1)
    return out
