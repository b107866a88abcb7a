"""Convert the official HPA segmentation model files into Keras copies, or show what a file holds.

    python -m hpa_tf.segmentation.official convert --nuclei dpn_unet_nuclei_v1.pth \\
        --cell dpn_unet_cell_3ch_v1.pth --out models/ [--format keras|weights.h5]
    python -m hpa_tf.segmentation.official inspect dpn_unet_cell_3ch_v1.pth

``convert`` reads the files as data (no PyTorch, nothing in them is run) and writes
``nuclei.keras`` and ``cell.keras`` (or ``.weights.h5`` with a ``.json`` configuration beside them);
then ``hpacellseg:nuclei=models/nuclei.keras,cell=models/cell.keras`` needs no pickles.
Paths may be local or gs://.
"""

from __future__ import annotations

import sys

from hpa_tf import fs
from hpa_tf.cli import doc_parser, run


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m hpa_tf.segmentation.official", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="official .pth files -> Keras copies")
    conv.add_argument("--nuclei", required=True, help="the nuclei model file (dpn_unet_nuclei_v1.pth)")
    conv.add_argument("--cell", required=True, help="the cell model file (dpn_unet_cell_3ch_v1.pth)")
    conv.add_argument("--out", required=True, help="folder for nuclei.<format> and cell.<format>")
    conv.add_argument("--format", choices=("keras", "weights.h5"), default="keras")
    show = sub.add_parser("inspect", help="the classes, tensors and configuration of a model file")
    show.add_argument("path")
    args = parser.parse_args(argv)

    from hpa_tf.segmentation.official.convert import (
        config_from_tensors,
        network_from_tensors,
        save_network,
        strip_prefix,
    )
    from hpa_tf.segmentation.official.torchfile import read_torch_file

    if args.command == "inspect":
        f = read_torch_file(args.path)
        tensors = strip_prefix(f.tensors)
        n = sum(int(v.size) for k, v in tensors.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
        print(f"{args.path}: {f.format} serialisation, {len(tensors)} tensors, {n} parameters")
        for cls, count in sorted(f.classes.items()):
            print(f"  {cls} {count}")
        print(f"  configuration: {config_from_tensors(tensors, args.path).to_dict()}")
        return 0
    for path in (args.nuclei, args.cell):
        if not fs.exists(path):
            raise FileNotFoundError(f"{path}: no such model file (the official release's .pth files; nothing is downloaded)")
    fs.makedirs(args.out)
    for kind, path in (("nuclei", args.nuclei), ("cell", args.cell)):
        out = fs.join(args.out, f"{kind}.{args.format}")
        save_network(network_from_tensors(read_torch_file(path).tensors, path), out)
        print(f"{path} -> {out}")
    print(f"use: hpacellseg:nuclei={fs.join(args.out, 'nuclei.' + args.format)},cell={fs.join(args.out, 'cell.' + args.format)}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
