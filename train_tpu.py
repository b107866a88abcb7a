"""Train an hpa-tf model under any tf.distribute strategy (TPU, GPUs, workers, CPU).

    python train_tpu.py --config configs/demo_cpu.yaml [--set train.epochs=3 model.backbone=efficientnet_b0]
"""

from __future__ import annotations

import argparse
import sys

import hpa_tf  # noqa: F401  (quiet TensorFlow logs before it loads)
from hpa_tf.config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train_tpu.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a YAML file under configs/")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides, e.g. --set train.epochs=3 model.backbone=efficientnet_b0 (repeatable)")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    from hpa_tf.training import train

    result = train(config)
    hist = result["history"]
    last = {k: round(float(v[-1]), 4) for k, v in hist.items() if v}
    print(f"trained on {result['replicas']} replica(s), {result['steps_per_epoch']} steps/epoch; last epoch: {last}")
    print(f"outputs in {result['model_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
