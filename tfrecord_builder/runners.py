"""Two ways to run the same per-image function over the shard plan: a local process pool, or an
Apache Beam pipeline (DirectRunner here; Dataflow, Spark or Flink with ``--beam-options``)."""

from __future__ import annotations

import multiprocessing as mp
import shlex
from collections.abc import Iterable, Sequence

from tqdm import tqdm

from hpa_tf.workers import die_with_parent
from tfrecord_builder.build import BuildConfig, Built, ImageJob, build_example
from tfrecord_builder.shards import write_shard


def _build(args: tuple[BuildConfig, ImageJob]) -> Built:
    return build_example(*args)


def run_local(config: BuildConfig, out: str, plan: Sequence[Sequence[ImageJob]], todo: Sequence[int], workers: int) -> None:
    """Build the shards ``todo`` with ``workers`` processes; each shard is written as soon as its
    images are done (images are processed in plan order, so shards complete one after another)."""
    jobs = [(config, job) for s in todo for job in plan[s]]
    pending = {s: len(plan[s]) for s in todo}
    results: dict[int, list[Built]] = {s: [] for s in todo}
    owner = [s for s in todo for _ in plan[s]]
    bar = tqdm(total=len(jobs), desc="building", unit="img")
    if workers > 1:
        pool = mp.get_context("spawn").Pool(workers, initializer=die_with_parent)  # spawn: TensorFlow does not survive fork
        stream = pool.imap(_build, jobs, chunksize=1)
    else:
        pool, stream = None, map(_build, jobs)
    try:
        for shard, built in zip(owner, stream):
            results[shard].append(built)
            pending[shard] -= 1
            bar.update(1)
            if pending[shard] == 0:
                write_shard(out, shard, len(plan), results.pop(shard), config.compression)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()


def _keyed_build(item: tuple[int, int, ImageJob], config: BuildConfig) -> tuple[int, tuple[int, Built]]:
    shard, position, job = item
    return shard, (position, build_example(config, job))


def _write_group(group: tuple[int, Iterable[tuple[int, Built]]], out: str, n_shards: int, compression: str) -> int:
    # Iterable, as GroupByKey gives it: recent Beam (2.78 here) checks the hint against what GroupByKey yields
    shard, items = group
    write_shard(out, shard, n_shards, [b for _, b in sorted(items, key=lambda x: x[0])], compression)
    return shard


def run_beam(config: BuildConfig, out: str, plan: Sequence[Sequence[ImageJob]], todo: Sequence[int], beam_options: str = "") -> None:
    """The same build as a Beam pipeline: build every image in parallel, group by shard, write."""
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as err:
        raise ImportError('the beam runner needs Apache Beam: pip install "hpa-tf[beam]"') from err
    items = [(s, p, job) for s in todo for p, job in enumerate(plan[s])]
    options = PipelineOptions(shlex.split(beam_options) if beam_options else [])
    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | "Images" >> beam.Create(items)
            | "Build" >> beam.Map(_keyed_build, config)
            | "ByShard" >> beam.GroupByKey()
            | "Write" >> beam.Map(_write_group, out, len(plan), config.compression)
        )
