"""Reading HPA images and indexing datasets (every path through ``tf.io.gfile``)."""

from hpa_tf.io.images import (
    CHANNELS,
    EXTENSIONS,
    ImageReadError,
    channel_path,
    decode_channel,
    find_channel,
    has_any_channel,
    image_extension,
    probe_size,
    read_image,
    to_8bit_view,
    to_uint8,
    to_uint16,
    to_unit_float,
)
from hpa_tf.io.index import (
    LabelTableError,
    index_dataset,
    read_label_table,
    scan_image_ids,
)
from hpa_tf.io.png import read_label_png, write_label_png

__all__ = [
    "CHANNELS",
    "EXTENSIONS",
    "ImageReadError",
    "LabelTableError",
    "channel_path",
    "decode_channel",
    "find_channel",
    "has_any_channel",
    "image_extension",
    "probe_size",
    "index_dataset",
    "read_image",
    "read_label_png",
    "read_label_table",
    "scan_image_ids",
    "to_8bit_view",
    "to_uint8",
    "to_uint16",
    "to_unit_float",
    "write_label_png",
]
