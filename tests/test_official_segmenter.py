"""The official segmentation network in Keras: model files read as data, the network, conversion,
the ``hpacellseg:`` segmenter on it. The fixtures under data/official_segmenter are a small DPNUnet
(the official architecture, fewer blocks and channels) written by PyTorch in both serialisations
(``make_fixtures.py``), with PyTorch's output for one input, so the default run needs no PyTorch."""

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hpa_tf.segmentation import check_segmenter, get_segmenter
from hpa_tf.segmentation.official import (
    DPNUnetConfig,
    UnsafePickleError,
    build_network,
    load_network,
    read_torch_file,
    save_network,
    state_shapes,
)
from hpa_tf.segmentation.official.__main__ import main as official_cli
from hpa_tf.segmentation.official.torchfile import LEGACY_MAGIC, LEGACY_PROTOCOL

FIXTURES = Path(__file__).parent / "data" / "official_segmenter"
ZIP, LEGACY = str(FIXTURES / "tiny_dpn_unet_zip.pth"), str(FIXTURES / "tiny_dpn_unet_legacy.pth")
TINY = DPNUnetConfig(num_init_features=4, k_r=4, groups=2, k_sec=(2, 1, 1, 2), inc_sec=(2, 2, 2, 2), widths=(4, 4, 4, 4))
OFFICIAL_STATE = Path(__file__).resolve().parents[2] / "shared" / "official_segmenter" / "network_state.tsv"


def test_both_torch_serialisations_give_the_same_tensors_and_module_tree():
    zipped, legacy = read_torch_file(ZIP), read_torch_file(LEGACY)
    assert (zipped.format, legacy.format) == ("zip", "legacy")
    assert list(zipped.tensors) == list(legacy.tensors) and len(zipped.tensors) == 163
    for name, value in zipped.tensors.items():
        assert value.dtype == legacy.tensors[name].dtype and np.array_equal(value, legacy.tensors[name]), name
    assert zipped.classes == legacy.classes
    assert zipped.classes["pytorch_zoo.unet.DPNUnet"] == 1 and zipped.classes["pytorch_zoo.dpn.CatBnAct"] == 1
    assert zipped.tensors["encoder_stages.0.1.num_batches_tracked"] == 7
    assert zipped.tensors["encoder_stages.1.1.c3x3_b.conv.weight"].shape == (4, 2, 3, 3)  # OIHW, 2 groups


@pytest.mark.parametrize("path", [ZIP, LEGACY])
def test_the_keras_network_equals_pytorch_on_the_files(path):
    io_ = np.load(FIXTURES / "tiny_dpn_unet_io.npz")
    model = load_network(path)
    out = np.asarray(model(io_["x"]))
    assert out.shape == (1, 32, 32, 3) and np.abs(out - io_["softmax"]).max() < 1e-4
    assert io_["softmax"].std() > 0.05  # a network whose output depends on its input


def _zip_file(path: Path, payload: bytes) -> str:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")
    return str(path)


def _legacy_file(path: Path, payload: bytes) -> str:
    head = b"".join(pickle.dumps(v, protocol=2) for v in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}))
    path.write_bytes(head + payload)
    return str(path)


class _Runs:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return (self.call, (self.arg,))


class Net:  # a module class from outside the module tree's packages
    pass


@pytest.mark.parametrize("write", [_zip_file, _legacy_file])
def test_a_pickle_asking_for_anything_but_tensors_and_modules_is_refused_unrun(tmp_path, write):
    marker = tmp_path / "ran"
    cases = {"os.system": _Runs(os.system, f"touch {marker}"), "eval": _Runs(eval, "print('ran')"),
             "test_official_segmenter.Net": Net()}
    for i, (what, obj) in enumerate(cases.items()):
        path = write(tmp_path / f"evil{i}.pth", pickle.dumps({"weight": obj}, protocol=2))
        with pytest.raises(UnsafePickleError) as err:
            read_torch_file(path)
        message = str(err.value)
        assert "\n" not in message and path in message and what.split(".")[-1] in message and "refused" in message
    assert not marker.exists()
    with pytest.raises(ValueError, match="not a (readable )?PyTorch file"):
        read_torch_file(write(tmp_path / "bytes.pth", b"not a pickle at all"))


def test_converted_copies_load_without_the_pickles_and_the_cli(tmp_path, capsys):
    x = np.load(FIXTURES / "tiny_dpn_unet_io.npz")["x"]
    expected = np.asarray(load_network(ZIP)(x))
    assert official_cli(["convert", "--nuclei", ZIP, "--cell", LEGACY, "--out", str(tmp_path / "k")]) == 0
    assert official_cli(["convert", "--nuclei", ZIP, "--cell", LEGACY, "--out", str(tmp_path / "h"),
                         "--format", "weights.h5"]) == 0
    for path in (tmp_path / "k" / "cell.keras", tmp_path / "h" / "nuclei.weights.h5"):
        assert np.abs(np.asarray(load_network(str(path))(x)) - expected).max() < 1e-6, path
    assert (tmp_path / "h" / "nuclei.json").exists()
    assert official_cli(["inspect", LEGACY]) == 0
    shown = capsys.readouterr().out
    assert "legacy serialisation, 163 tensors" in shown and "pytorch_zoo.dpn.DualPathBlock 6" in shown
    with pytest.raises(ValueError, match=r"\.keras or \.weights\.h5"):
        save_network(build_network(TINY), str(tmp_path / "x.h5"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_network(str(tmp_path / "missing.pth"))


def test_the_network_of_a_configuration_is_the_files_network():
    model = build_network(TINY)
    assert state_shapes(model) == {k: v.shape for k, v in read_torch_file(ZIP).tensors.items()}


def test_the_full_size_network_is_the_official_one():
    """DPN-92 + U-Net, 3 classes: every state_dict name and shape of the official files, ~139 M
    parameters, and it runs (on a small input)."""
    model = build_network(random_init=False)
    shapes = state_shapes(model)
    assert len(shapes) == 595 and model.count_params() == 139_234_083  # with the batch-norm statistics
    params = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert params == 139_108_867
    assert shapes["encoder_stages.4.3.bn.weight"] == (2688,) and shapes["bottlenecks.0.seq.0.weight"] == (1552, 3104, 3, 3)
    if OFFICIAL_STATE.exists():  # the list read off the official class (shared/ beside the repository)
        rows = [line.split("\t") for line in OFFICIAL_STATE.read_text().splitlines()[1:]]
        assert shapes == {k: tuple(int(d) for d in s.strip("()").split(",") if d.strip()) for k, s, _ in rows}
    out = np.asarray(model(np.zeros((1, 64, 64, 3), np.float32)))
    assert out.shape == (1, 64, 64, 3) and np.allclose(out.sum(-1), 1, atol=1e-5)


def test_the_spec_checks_its_numbers_in_one_line(tmp_path):
    base = f"hpacellseg:nuclei={ZIP},cell={LEGACY}"
    for bad, key in (("batch=-2", "batch"), ("batch=0", "batch"), ("batch=2.5", "batch"), ("scale=abc", "scale"),
                     ("scale=-1", "scale"), ("xla=maybe", "xla")):
        with pytest.raises(ValueError) as err:
            get_segmenter(f"{base},{bad}")
        message = str(err.value)
        assert "\n" not in message and f"{bad.split('=')[0]}=" in message and base in message and key in message
    with pytest.raises(ValueError, match="backend must be 'keras' or 'torch'"):
        get_segmenter(f"{base},backend=onnx")
    with pytest.raises(ValueError, match="device 'tpu9x'"):
        check_segmenter(f"{base},device=tpu9x")
    with pytest.raises(FileNotFoundError, match="n.pth not found"):
        check_segmenter(f"hpacellseg:nuclei={tmp_path}/n.pth,cell={LEGACY}")
    check_segmenter(base)  # no PyTorch needed
    assert get_segmenter(f"{base},batch=3,scale=0.5").batch_size == 3


def test_hpacellseg_runs_the_keras_networks_batched_and_pads_1728():
    from hpa_tf.synthetic.generator import generate

    # field=864: every image is a copy of an 864 px field, seen at 216 px (not a multiple of 32: padded)
    seg = get_segmenter(f"hpacellseg:nuclei={ZIP},cell={LEGACY},batch=2,device=cpu,xla=0,field=864")
    net = seg._net("cell")
    calls, fn = [], net._fn
    net._fn = lambda x: calls.append(tuple(x.shape)) or fn(x)
    try:
        images = [generate(5, "test", i, s).image for i, s in enumerate((512, 864, 512, 512))]
        out = seg.segment(images)
    finally:
        net._fn = fn
    assert [o.cells.shape for o in out] == [(s, s) for s in (512, 864, 512, 512)]
    # four images in two forward passes of 2, each 216 px padded to a multiple of 32
    assert sorted(c[0] for c in calls) == [2, 2] and all(c[1] % 32 == 0 and c[1] > 216 for c in calls), calls
    assert get_segmenter(f"hpacellseg:nuclei={ZIP},cell={LEGACY},device=cpu,xla=0")._net("cell") is net  # one per process


def test_the_xla_compiled_network_equals_the_network():
    from hpa_tf.segmentation.official.runtime import compiled_network

    io_ = np.load(FIXTURES / "tiny_dpn_unet_io.npz")
    net = compiled_network(ZIP, "cpu", True)
    assert np.abs(net(io_["x"]) - io_["softmax"]).max() < 1e-4


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")
@pytest.mark.parametrize("legacy", [False, True])
def test_keras_equals_pytorch_on_a_larger_network_and_the_torch_path(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    from torch_dpn_unet import DPNUnet, as_official_classes, randomise

    as_official_classes()
    cfg = dict(num_init_features=16, k_r=16, groups=4, k_sec=(2, 2, 3, 2), inc_sec=(4, 8, 8, 16), widths=(32, 64, 128, 256))
    net = randomise(DPNUnet(3, 3, **cfg), seed=3)
    path = str(tmp_path / "net.pth")
    torch.save(torch.nn.DataParallel(net) if legacy else net, path, _use_new_zipfile_serialization=not legacy)
    x = np.random.default_rng(4).normal(0, 1, (2, 64, 96, 3)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(x.transpose(0, 3, 1, 2))), 1).numpy().transpose(0, 2, 3, 1)
    model = load_network(path)  # the DataParallel copy's "module." prefix dropped
    assert np.abs(np.asarray(model(x)) - expected).max() < 1e-3 and expected.std() > 0.05
    if legacy:
        return
    from hpa_tf.synthetic.generator import generate

    images = [generate(6, "test", i, 512).image for i in range(2)]
    keras_out = get_segmenter(f"hpacellseg:nuclei={path},cell={path},device=cpu").predict(images)
    torch_out = get_segmenter(f"hpacellseg:nuclei={path},cell={path},device=cpu,backend=torch").predict(images)
    for (kn, kc), (tn, tc) in zip(keras_out, torch_out):
        assert np.abs(kn.astype(int) - tn).max() <= 1 and np.abs(kc.astype(int) - tc).max() <= 1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")
def test_the_full_size_keras_network_equals_pytorch(tmp_path):
    """The official size, written as the official files are (legacy serialisation, module whole)."""
    torch = pytest.importorskip("torch")
    from torch_dpn_unet import DPNUnet, as_official_classes, calibrate, randomise

    as_official_classes()
    net = calibrate(randomise(DPNUnet(3, 3), seed=5))  # activations at a trained network's scale
    path = str(tmp_path / "dpn_unet_cell_3ch_v1.pth")
    torch.save(net, path, _use_new_zipfile_serialization=False)
    x = np.random.default_rng(6).normal(0, 1, (1, 96, 64, 3)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(x.transpose(0, 3, 1, 2))), 1).numpy().transpose(0, 2, 3, 1)
    f = read_torch_file(path)
    assert f.format == "legacy" and f.classes["pytorch_zoo.dpn.DualPathBlock"] == 30 and len(f.tensors) == 595
    out = np.asarray(load_network(path)(x))
    assert np.abs(out - expected).max() < 1e-3 and expected.std() > 0.05


def test_a_tensor_must_come_from_the_files_storages(tmp_path):
    # torch._utils._rebuild_parameter called on a string instead of a tensor of the file
    payload = pickle.dumps({"w": _Runs(eval, "x")}, protocol=2).replace(b"__builtin__\neval", b"torch._utils\n_rebuild_parameter")
    path = _zip_file(tmp_path / "odd.pth", payload)
    with pytest.raises(UnsafePickleError, match=r"odd.pth: refused: a parameter rebuilt from str"):
        read_torch_file(path)


def _one_tensor_file(path: Path, shape: tuple, stride: tuple, offset: int = 0) -> str:
    """A zip .pth holding one 4-float storage and one tensor over it of the given geometry."""
    import struct

    def text(x):
        b = x.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    def glob(module, name):
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def ints(values):
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"

    pkl = (b"\x80\x02" + glob("collections", "OrderedDict") + b")R" + text("w") + glob("torch._utils", "_rebuild_tensor_v2")
           + b"((" + text("storage") + glob("torch", "FloatStorage") + text("0") + text("cpu") + b"J"
           + struct.pack("<i", 4) + b"tQ" + b"J" + struct.pack("<i", offset) + ints(shape) + ints(stride) + b"\x89"
           + glob("collections", "OrderedDict") + b")RtRs.")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/data/0", struct.pack("<4f", 1, 2, 3, 4))
    return str(path)


@pytest.mark.parametrize("shape, stride, offset", [((4096,), (-100000,), 0), ((8,), (-1,), 0), ((2,), (1,), -3),
                                                   ((1 << 20, 1 << 20), (0, 0), 0), ((5,), (1,), 0)])
def test_a_tensor_may_not_reach_outside_its_storage(tmp_path, shape, stride, offset):
    """Negative strides or offsets, a view larger than its storage: refused in one line, never read
    (as_strided would read the process's memory, or crash it)."""
    path = _one_tensor_file(tmp_path / "oob.pth", shape, stride, offset)
    with pytest.raises(ValueError, match=r"oob.pth: a tensor of shape"):
        read_torch_file(path)
    assert read_torch_file(_one_tensor_file(tmp_path / "ok.pth", (2, 2), (2, 1))).tensors["w"].tolist() == [[1, 2], [3, 4]]


def test_a_damaged_file_is_one_line_naming_it(tmp_path):
    data = Path(_one_tensor_file(tmp_path / "ok.pth", (4,), (1,))).read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.pth: not a readable PyTorch file"):
        read_torch_file(str(tmp_path / "cut.pth"))
    # Named by its key before any image is read, as every command checks its segmenter first.
    good = str(FIXTURES / "tiny_dpn_unet_zip.pth")
    with pytest.raises(ValueError, match=r"segmenter cell=.*cut.pth: not a readable PyTorch file"):
        check_segmenter(f"hpacellseg:nuclei={good},cell={tmp_path / 'cut.pth'}")
