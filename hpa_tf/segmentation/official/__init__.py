"""The official HPA cell segmentation networks (HPA-Cell-Segmentation's ``DPNUnet``) native in Keras.

The official model files (``dpn_unet_nuclei_v1.pth``, ``dpn_unet_cell_3ch_v1.pth``) are read as data,
without PyTorch and without running their pickles (:mod:`.torchfile`); the network is built in Keras
from its hyper-parameters (:mod:`.network`) and takes the files' weights (:mod:`.convert`):

    model = load_network("dpn_unet_cell_3ch_v1.pth")   # or a converted .keras / .weights.h5 copy
    probs = model.predict(normalised)                  # (B, H, W, 3) -> softmax (B, H, W, 3)

A converted copy for machines without the pickles (a Kaggle notebook):

    python -m hpa_tf.segmentation.official convert --nuclei N.pth --cell C.pth --out DIR
"""

from hpa_tf.segmentation.official.convert import (
    config_from_tensors,
    load_network,
    network_from_tensors,
    save_network,
    state_shapes,
)
from hpa_tf.segmentation.official.network import DPNUnetConfig, build_network
from hpa_tf.segmentation.official.torchfile import TorchFile, UnsafePickleError, read_torch_file

__all__ = ["DPNUnetConfig", "TorchFile", "UnsafePickleError", "build_network", "config_from_tensors", "load_network",
           "network_from_tensors", "read_torch_file", "save_network", "state_shapes"]
