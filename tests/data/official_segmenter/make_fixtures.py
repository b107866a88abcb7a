"""Write the small official-format fixtures (run once, with PyTorch; the files are committed):

    python tests/data/official_segmenter/make_fixtures.py

- ``tiny_dpn_unet_zip.pth`` and ``tiny_dpn_unet_legacy.pth``: a small DPNUnet (the official
  architecture, fewer blocks and channels, random weights and batch-norm statistics) pickled whole
  as the official files are, under the official classes' module paths, in torch's zip and legacy
  (torch <= 1.5) serialisations;
- ``tiny_dpn_unet_io.npz``: an input (1, 32, 32, 3), NHWC, and PyTorch's softmax of it, NHWC.
"""

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent))
from torch_dpn_unet import DPNUnet, as_official_classes, randomise  # noqa: E402

TINY = dict(num_init_features=4, k_r=4, groups=2, k_sec=(2, 1, 1, 2), inc_sec=(2, 2, 2, 2), widths=(4, 4, 4, 4))


def main() -> None:
    as_official_classes()
    torch.manual_seed(0)
    model = randomise(DPNUnet(3, 3, **TINY), seed=1)
    torch.save(model, HERE / "tiny_dpn_unet_zip.pth")
    torch.save(model, HERE / "tiny_dpn_unet_legacy.pth", _use_new_zipfile_serialization=False)
    x = np.random.default_rng(2).normal(0, 1, (1, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        y = torch.softmax(model(torch.from_numpy(x.transpose(0, 3, 1, 2))), dim=1).numpy().transpose(0, 2, 3, 1)
    np.savez_compressed(HERE / "tiny_dpn_unet_io.npz", x=x, softmax=y)


if __name__ == "__main__":
    main()
