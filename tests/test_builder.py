import json
from collections import Counter
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from hpa_tf.data.crops import cell_crops
from hpa_tf.data.schema import SCHEMA_VERSION, parse_cell_record, parse_image_record
from hpa_tf.io import read_image
from tfrecord_builder.__main__ import main


def _read(out, kind, parse, compression=""):
    files = sorted(tf.io.gfile.glob(f"{out}/{kind}-*.tfrec"))
    return [{k: v.numpy() for k, v in ex.items()} for ex in tf.data.TFRecordDataset(files, compression_type=compression).map(parse)]


def _build(data, labels, out, *extra):
    return main(["build", "--data", str(data), "--labels", str(labels), "--out", str(out), "--image-size", "64",
                 "--cell-size", "32", "--shard-mb", "0.01", "--folds", "2", *extra])


@pytest.fixture(scope="module")
def built(built_records):
    return built_records


def test_records_hold_what_the_schema_promises(built, synth_dir):
    manifest = json.loads((built / "manifest.json").read_text())
    train = pd.read_csv(synth_dir / "train.csv", dtype=str)
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["counts"]["images"] == 4
    assert manifest["counts"]["shards"] == 4  # 0.01 MB shards: one image each
    images = {r["id"].decode(): r for r in _read(built, "images", parse_image_record)}
    cells = {r["id"].decode(): r for r in _read(built, "cells", parse_cell_record)}
    assert set(images) == set(cells) == set(train["ID"])
    for image_id, label in zip(train["ID"], train["Label"]):
        rec, cel = images[image_id], cells[image_id]
        want = [int(x) for x in label.split("|")]
        assert np.flatnonzero(rec["labels"]).tolist() == want and np.array_equal(rec["labels"], cel["labels"])
        src = read_image(str(synth_dir / "train"), image_id)
        assert rec["image"].shape == (64, 64, 4) and rec["height"] == 256 and rec["schema_version"] == SCHEMA_VERSION
        assert np.array_equal(rec["image"], cv2.resize(src, (64, 64), interpolation=cv2.INTER_AREA))  # lossless, RGBY
        assert rec["mask"].dtype == np.uint16 and rec["mask"].max() <= rec["n_cells"]
        n = int(cel["n_cells"])
        assert n == rec["n_cells"] > 5 and len(cel["cells"]) == n and cel["bbox"].shape == (n, 4)
        y0, x0, y1, x1 = cel["bbox"].T
        assert np.array_equal(cel["border"], ((y0 == 0) | (x0 == 0) | (y1 == 256) | (x1 == 256)).astype(int))
        assert (cel["area"] <= (y1 - y0) * (x1 - x0)).all() and (cel["area"] > 0).all()
        crop = tf.io.decode_png(cel["cells"][0], channels=4).numpy()
        assert crop.shape == (32, 32, 4)
    for f in manifest["shards"]["images"] + manifest["shards"]["cells"]:
        assert f["bytes"] == (built / f["file"]).stat().st_size
    folds = pd.read_csv(built / "folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1] and len(folds) == 4


def test_cell_crops_zero_other_cells_and_keep_aspect():
    img = np.full((40, 60, 4), 200, np.uint8)
    cells = np.zeros((40, 60), np.uint16)
    cells[5:35, 10:20] = 1  # tall: 30 x 10
    cells[5:35, 20:30] = 2  # its neighbour
    crops, bbox, area, border, index = cell_crops(img, cells, 30)
    assert bbox.tolist() == [[5, 10, 35, 20], [5, 20, 35, 30]] and area.tolist() == [300, 300] and index.tolist() == [1, 2]
    c = crops[0]
    assert (c[:, :10] == 0).all() and (c[:, -10:] == 0).all() and (c[:, 11:19] == 200).all()  # padded, not stretched
    img2 = img.copy()
    cells[5:35, 15] = 2  # a neighbour's pixels inside cell 1's box are zeroed
    crops, *_ = cell_crops(img2, cells, 30)
    assert (crops[0][:, 15] == 0).all()


def test_rerun_skips_complete_shards_and_rebuilds_broken_ones(built, synth_dir, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(built, out)
    before = {p.name: p.read_bytes() for p in out.glob("*.tfrec")}
    (out / "_meta" / "shard-00002.json").unlink()  # killed while writing shard 2
    (out / "cells-00002-of-00004.tfrec").unlink()
    (out / "images-00002-of-00004.tfrec.tmp-1-abc").write_bytes(b"half")
    assert _build(synth_dir / "train", synth_dir / "train.csv", out) == 0
    assert "4 images in 4 shards; 3 already complete" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in out.glob("*.tfrec")}
    assert after == before  # shard 2 rebuilt byte for byte, the others untouched


@pytest.mark.parametrize("change", ["setting", "label", "image", "folds"])
def test_records_made_from_other_inputs_are_refused_never_patched(built, synth_dir, tmp_path, change):
    """A record set is immutable: another setting, label, image file or fold count is a new record
    set, refused in one line naming --overwrite; --replace-changed builds it anew."""
    out, data, labels = tmp_path / "copy", tmp_path / "train", tmp_path / "train.csv"
    shutil.copytree(built, out)
    shutil.copytree(synth_dir / "train", data)
    shutil.copy(synth_dir / "train.csv", labels)
    before = json.loads((out / "provenance.json").read_text())["fingerprint"]
    assert _build(data, labels, out) == 0  # the same inputs from other folders: the same record set
    extra = ["--folds", "3"] if change == "folds" else ["--image-size", "96"] if change == "setting" else []
    table = pd.read_csv(labels, dtype=str)
    if change == "label":
        table.loc[0, "Label"] = "5" if table.loc[0, "Label"] != "5" else "6"
        table.to_csv(labels, index=False)
    if change == "image":
        path = data / f"{table['ID'][1]}_green.png"
        cv2.imwrite(str(path), 255 - cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
    with pytest.raises(ValueError, match="made from other inputs .*--overwrite"):
        _build(data, labels, out, *extra)
    assert json.loads((out / "provenance.json").read_text())["fingerprint"] == before  # untouched
    assert _build(data, labels, out, *extra, "--replace-changed") == 0
    assert json.loads((out / "provenance.json").read_text())["fingerprint"] != before
    if change == "label":
        record = next(r for r in _read(out, "images", parse_image_record) if r["id"].decode() == table["ID"][0])
        assert int(table.loc[0, "Label"]) in np.flatnonzero(record["labels"])
    if change == "folds":
        assert sorted(pd.read_csv(out / "folds.csv")["fold"].unique()) == [0, 1, 2]


def test_bad_images_go_to_errors_csv(synth_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_dir / "train", data)
    train = pd.read_csv(synth_dir / "train.csv", dtype=str)
    broken = train["ID"][1]
    (data / f"{broken}_red.png").write_bytes(b"")
    black = "all-black"
    for c in ("red", "green", "blue", "yellow"):
        cv2.imwrite(str(data / f"{black}_{c}.png"), np.zeros((256, 256), np.uint8))
    labels = tmp_path / "train.csv"
    pd.concat([train, pd.DataFrame({"ID": [black, "missing-one"], "Label": ["0", "1"]})]).to_csv(labels, index=False)
    assert _build(data, labels, tmp_path / "out") == 0
    errors = pd.read_csv(tmp_path / "out" / "errors.csv").set_index("ID")["error"]
    assert "empty" in errors[broken] and "no cells" in errors[black] and "no red channel" in errors["missing-one"]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["images"] == 3


def test_builder_and_readers_on_tf_ram_filesystem(synth_dir):
    src, out = "ram://builder_src", "ram://builder_out"
    for f in (synth_dir / "train").iterdir():
        with tf.io.gfile.GFile(f"{src}/{f.name}", "wb") as g:
            g.write(f.read_bytes())
    with tf.io.gfile.GFile(f"{src}/train.csv", "wb") as g:
        g.write((synth_dir / "train.csv").read_bytes())
    assert _build(src, f"{src}/train.csv", out, "--compression", "gzip") == 0  # one process: ram:// is per process
    assert len(_read(out, "images", parse_image_record, "GZIP")) == 4
    assert len(_read(out, "cells", parse_cell_record, "GZIP")) == 4
    assert tf.io.gfile.exists(f"{out}/manifest.json")


def test_beam_direct_runner_writes_the_same_records(built, synth_dir, tmp_path):
    out = tmp_path / "beam"
    assert _build(synth_dir / "train", synth_dir / "train.csv", out, "--runner", "beam",
                  "--beam-options=--runner=DirectRunner --direct_num_workers=1") == 0
    local = json.loads((built / "manifest.json").read_text())["shards"]
    beam = json.loads((out / "manifest.json").read_text())["shards"]
    assert local == beam  # same files, same sha256


def test_inspect_prints_and_draws(built, capsys):
    assert main(["inspect", str(built), "--n", "2"]) == 0
    text = capsys.readouterr().out
    assert "4 images" in text and "folds:" in text
    sheet = cv2.imread(str(built / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] == 2 * 256


def test_several_sources_make_one_record_set(synth_dir, tmp_path):
    truth = pd.read_csv(synth_dir / "truth" / "images.csv", dtype=str)
    external = tmp_path / "external.csv"
    truth[truth["split"] == "test"][["ID", "Label"]].to_csv(external, index=False)
    out = tmp_path / "records"
    assert main(["build", "--source", "competition", str(synth_dir / "train"), str(synth_dir / "train.csv"),
                 "--source", "external", str(synth_dir / "test"), str(external), "--out", str(out),
                 "--image-size", "64", "--cell-size", "32", "--shard-mb", "0.01", "--folds", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: v["images"] for k, v in manifest["sources"].items()} == {"competition": 4, "external": 4}
    records = _read(out, "images", parse_image_record)
    assert Counter(r["source"].decode() for r in records) == {"competition": 4, "external": 4}
    assert Counter(r["source"].decode() for r in _read(out, "cells", parse_cell_record)) == {"competition": 4, "external": 4}
    fold_of = pd.read_csv(out / "folds.csv").set_index("ID")["fold"].to_dict()
    assert set(fold_of.values()) == {0, 1} and len(fold_of) == 8  # stratified over all eight images
    for r in records:
        r["fold"] = fold_of[r["id"].decode()]

    from hpa_tf.config import load_config
    from hpa_tf.data.pipeline import count_images, make_dataset

    cfg = load_config(None, [f"data.records={out}", "data.image_size=32", "data.val_fold=0",
                             "data.val_sources=[competition]", "data.shuffle_buffer=1"])
    ex_val = [e for e in records if e["fold"] == 0 and e["source"] == b"competition"]
    n_val = sum(int(b[0].shape[0]) for b in make_dataset(cfg, False, 1))
    assert n_val == len(ex_val) == count_images(str(out), [0], ["competition"])
    # training sees everything else, the external images of fold 0 included
    plain = ["augment.flip=false", "augment.rot90=false", "augment.crop_min=1", "augment.contrast=0",
             "augment.p_negative=0", "augment.p_swap=0"]
    train_cfg = load_config(None, [f"data.records={out}", "data.image_size=64", "data.val_fold=0",
                                   "data.val_sources=[competition]", *plain])
    seen = {np.rint(x[0].numpy() * 255).astype(np.uint8).tobytes() for x, _ in make_dataset(train_cfg, True, 1).take(80)}
    want = {e["image"].tobytes() for e in records if not (e["fold"] == 0 and e["source"] == b"competition")}
    assert seen == want and len(want) == 8 - n_val and any(e["fold"] == 0 and e["source"] == b"external" for e in records)
    with pytest.raises(ValueError, match="no source \\['kaggle'\\]"):
        count_images(str(out), [0], ["kaggle"])


def test_fields_of_one_antibody_or_well_share_a_fold(synth_dir, tmp_path):
    """Fields of one antibody (HPA's {antibody}_{plate}_{well}_{field} IDs) or one well never sit on
    both sides of a split, and the folds stay stratified; the competition's UUIDs fold as before."""
    from tfrecord_builder.folds import assign_folds

    rng = np.random.default_rng(0)
    ids, labels = [], []
    for antibody in range(60):
        lab = sorted(set(rng.integers(0, 19, 2).tolist()))
        for well, field in [("A1", 1), ("A1", 2), ("B3", 1)]:
            ids.append(f"{1000 + antibody}_{170 + antibody % 3}_{well}_{field}")
            labels.append(lab)
    ids += [f"{k:08x}-bb99-11e8-b2b9-ac1f6b6435d0" for k in range(40)]
    labels += [sorted(set(rng.integers(0, 19, 2).tolist())) for _ in range(40)]
    for group_by, key in (("antibody", lambda i: i.split("_")[0]), ("well", lambda i: i.rsplit("_", 1)[0])):
        folds = assign_folds(ids, labels, 4, group_by=group_by)
        by_group: dict[str, set] = {}
        for i in ids[:180]:
            by_group.setdefault(key(i), set()).add(folds[i])
        assert all(len(f) == 1 for f in by_group.values())
        assert Counter(folds.values()).most_common()[-1][1] >= 40  # no fold starved
    plain = assign_folds(ids, labels, 4, group_by="none")
    assert any(len({plain[i] for i in ids[3 * a : 3 * a + 3]}) > 1 for a in range(60))  # what grouping prevents

    # the builder: four fields of two antibodies, two folds
    data, table = tmp_path / "train", pd.read_csv(synth_dir / "train.csv", dtype=str)
    data.mkdir()
    names = {old: new for old, new in zip(table["ID"], ["501_9_A1_1", "501_9_A1_2", "502_9_B2_1", "502_9_B2_2"])}
    for old, new in names.items():
        for c in ("red", "green", "blue", "yellow"):
            shutil.copy(synth_dir / "train" / f"{old}_{c}.png", data / f"{new}_{c}.png")
    table.assign(ID=table["ID"].map(names)).to_csv(tmp_path / "train.csv", index=False)
    assert _build(data, tmp_path / "train.csv", tmp_path / "out") == 0
    fold_of = pd.read_csv(tmp_path / "out" / "folds.csv").set_index("ID")["fold"]
    assert fold_of["501_9_A1_1"] == fold_of["501_9_A1_2"] != fold_of["502_9_B2_1"] == fold_of["502_9_B2_2"]
    with pytest.raises(ValueError, match="4 images in 2 groups .* --group-by none"):
        _build(data, tmp_path / "train.csv", tmp_path / "three", "--folds", "3")
