"""Train an hpa-tf model under any tf.distribute strategy (TPU, GPUs, workers, CPU).

    python train_tpu.py --config configs/demo_cpu.yaml [--set train.epochs=3 model.backbone=efficientnet_b0]

The same command is ``python -m hpa_tf.train`` and ``hpa-tf-train`` (an installed package has no train_tpu.py).
"""

from __future__ import annotations

import sys

import hpa_tf  # noqa: F401  (quiet TensorFlow logs before it loads)
from hpa_tf.cli import doc_parser, run
from hpa_tf.config import add_config_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m hpa_tf.train", __doc__)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    config = config_from_args(args)
    from hpa_tf.training import train  # TensorFlow loads here, after --help and the config check

    result = train(config)
    hist = result["history"]
    last = {k: round(float(v[-1]), 4) for k, v in hist.items() if v and v[-1] is not None}
    print(f"trained on {result['replicas']} replica(s), {result['steps_per_epoch']} steps/epoch; last epoch: {last}")
    if result["best"]:
        print(f"best epoch {result['best']['epoch'] + 1} (val_map {result['best']['val_map']:.4f}) in best.keras")
    print(f"outputs in {result['model_dir']}")
    return 0


def cli() -> int:
    """The console script."""
    return run(main)


if __name__ == "__main__":
    sys.exit(cli())
