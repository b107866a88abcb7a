import cv2
import numpy as np
import pandas as pd

from hpa_tf.io import read_image
from hpa_tf.labels import NEGATIVE, parse_labels
from hpa_tf.synthetic import patterns as P
from hpa_tf.synthetic.__main__ import main
from hpa_tf.synthetic.generator import class_probabilities, generate, kaggle2021_label_sets, sample_image_labels
from hpa_tf.synthetic.layout import make_layout, smooth_noise
from hpa_tf.truth import Truth


def test_deterministic_and_consistent_truth():
    a, b = generate(5, "train", 2, 256), generate(5, "train", 2, 256)
    assert a.image_id == b.image_id and np.array_equal(a.image, b.image) and np.array_equal(a.cells, b.cells)
    c = generate(5, "train", 3, 256)
    assert c.image_id != a.image_id and not np.array_equal(c.image, a.image)
    truth_only = generate(5, "train", 2, 256, render=False)
    assert truth_only.image is None and np.array_equal(truth_only.cells, a.cells) and truth_only.cell_labels == a.cell_labels
    n = len(a.cell_labels)
    assert set(np.unique(a.cells)) == set(range(n + 1))
    inside = a.nuclei > 0
    assert np.array_equal(a.nuclei[inside], a.cells[inside])  # nucleus k lies in cell k


def test_images_are_hpa_like_scenes():
    """Over a handful of images: touching cells, border cells, heterogeneity, mitotic cells, Negative cells."""
    touching = border = hetero = negatives = 0
    for i in range(8):
        img = generate(11, "train", i, 256)
        lab = img.cells
        horiz = (lab[:, 1:] != lab[:, :-1]) & (lab[:, 1:] > 0) & (lab[:, :-1] > 0)
        touching += int(horiz.sum() > 0)
        edge_ids = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))) - {0}
        border += int(len(edge_ids) > 0)
        kinds = {tuple(c) for c in img.cell_labels}
        hetero += int(len(kinds) > 1)
        negatives += sum(c == [NEGATIVE] for c in img.cell_labels)
        union = sorted({c for cl in img.cell_labels for c in cl} - {NEGATIVE}) or [NEGATIVE]
        assert img.labels == union
        assert 1 <= len(img.labels) <= 3
        assert 8 <= len(img.cell_labels) <= 120
        # landmarks are where they belong: blue in nuclei, red and yellow in cytoplasm
        nuc, cyt = img.nuclei > 0, (img.cells > 0) & (img.nuclei == 0)
        px = img.image.astype(float)
        assert px[..., 2][nuc].mean() > 3 * px[..., 2][cyt].mean()
        assert px[..., 0][cyt].mean() > px[..., 0][nuc].mean()
        assert px[..., 3][cyt].mean() > 2 * px[..., 3][img.cells == 0].mean()
    assert touching == 8 and border == 8 and hetero >= 5 and negatives > 0


def test_each_class_pattern_is_where_its_organelle_is():
    rng = np.random.default_rng(0)
    size, s = 512, 0.5
    _, cells = make_layout(rng, size, n_mitotic_min=1)
    tex = np.clip(smooth_noise(rng, (size, size), 3 * s), -2, 2) / 2
    er = np.exp(-((smooth_noise(rng, (size, size), 9 * s) / 0.3) ** 2))
    inner = [c for c in cells if not c.mitotic and c.y0 > 0 and c.x0 > 0 and c.y1 < size and c.x1 < size][:5]
    mitotic = [c for c in cells if c.spindle_visible][0]
    assert len(inner) == 5

    def draw(cls, cell):
        sl = cell.slices
        args = (cell, rng, s, tex[sl], er[sl]) if cls == 6 else (cell, rng, s, tex[sl])
        return P.GREEN_PATTERNS[cls](*args) * cell.mask

    for cell in inner:
        pics = {c: draw(c, cell) for c in P.GREEN_PATTERNS}
        share = {c: (p * cell.nucleus).sum() / p.sum() for c, p in pics.items() if p.sum() > 0}
        for c in (0, 2, 3, 4, 5):
            assert share[c] > 0.9, (c, share[c])
        for c in (6, 7, 14, 16, 17):
            assert share[c] < 0.15, (c, share[c])
        rim = np.abs(cell.dn - 1) < 0.15
        assert (pics[1] * rim).sum() > 0.8 * pics[1].sum()
        assert (pics[13] * (cell.edge < 3)).sum() > 0.8 * pics[13].sum()
        assert pics[11].sum() == 0  # no spindle outside mitosis
        assert 0 < (pics[12] > 0.5).sum() < 0.03 * cell.mask.sum()  # centrosome: a dot or two
        # all 18 patterns differ from each other
        flat = np.stack([(p - p.mean()).ravel() / (p.std() + 1e-9) for p in pics.values() if p.std() > 0])
        corr = flat @ flat.T / flat.shape[1]
        np.fill_diagonal(corr, 0)
        assert corr.max() < 0.9
    assert draw(11, mitotic).sum() > 0


def test_label_frequencies_follow_the_competition_but_flattened():
    p = class_probabilities()
    assert p.argmax() == 0 and p.argmin() == 11  # Nucleoplasm most, Mitotic spindle least
    assert p[0] / p[11] < 8  # 8797 / 78 = 113 in the real data


def test_the_harder_setting_draws_real_label_sets_and_finer_textures():
    sets, p = kaggle2021_label_sets()
    assert len(sets) > 300 and abs(p.sum() - 1) < 1e-9
    rng = np.random.default_rng(0)
    drawn = [sample_image_labels(rng, "kaggle2021") for _ in range(3000)]
    assert all(d in sets for d in drawn) and max(map(len, drawn)) >= 4
    share = lambda c: np.mean([c in d for d in drawn])  # noqa: E731
    assert abs(share(0) - 8797 / 21806) < 0.03 and share(11) < 0.01  # as common / as rare as in train.csv
    assert share(11) < share(0) / 50  # 78 / 8797 in train.csv; flattened, the spindle has 1/8 of Nucleoplasm's share

    def correlation_length(green: np.ndarray) -> float:
        """Pixels to where the fine detail's autocorrelation falls to one half."""
        x = green.astype(np.float32)
        x -= cv2.GaussianBlur(x, (0, 0), 6)
        ac = np.fft.irfft2(np.abs(np.fft.rfft2(x)) ** 2, s=x.shape)
        r = (ac[0, :40] + ac[:40, 0]) / (2 * ac[0, 0])
        k = int(np.argmax(r < 0.5))
        return k - 1 + (r[k - 1] - 0.5) / (r[k - 1] - r[k])

    for i in (0, 1, 5):  # ER, microtubules, nucleoli + plasma membrane (smooth classes change little)
        coarse, fine = generate(3, "train", i, 1024), generate(3, "train", i, 1024, texture_scale=0.5)
        assert fine.labels == coarse.labels and np.array_equal(fine.cells, coarse.cells)  # same scene
        assert correlation_length(fine.image[..., 1]) < 0.95 * correlation_length(coarse.image[..., 1])


def test_varying_share_sets_how_many_cells_show_their_images_labels():
    """Share 1 draws exactly as before; share 0 gives each label to every cell that can show it (the
    spindle stays in dividing cells); in between, the share of an image's cells showing its labels
    (what the image-label oracle scores) lies between the two."""
    from hpa_tf.synthetic.generator import _LAYOUT, MITOTIC_SPINDLE, _draw_id, _rng, can_show

    def shown(share: float) -> tuple[float, int]:
        on = total = broken = 0
        for i in range(24):
            img = generate(0, "test", i, 512, render=False, varying_share=share)
            for lab in set(img.labels) - {NEGATIVE, MITOTIC_SPINDLE}:
                has = [lab in c for c in img.cell_labels]
                on, total = on + sum(has), total + len(has)
                if share == 0.0:  # every cell that can show it does: the layout's eligible cells, regenerated
                    rng = _rng(0, "test", i, _LAYOUT)
                    _draw_id(rng), sample_image_labels(rng)
                    _, cells = make_layout(rng, 512, n_mitotic_min=2 if MITOTIC_SPINDLE in img.labels else 0)
                    broken += sum(h != can_show(c, lab) for h, c in zip(has, cells))
        return on / total, broken

    assert [generate(0, "train", i, 512, render=False, varying_share=1.0).cell_labels for i in range(6)] == \
        [generate(0, "train", i, 512, render=False).cell_labels for i in range(6)]
    (varying, _), (half, _), (steady, broken) = shown(1.0), shown(0.5), shown(0.0)
    assert broken == 0 and steady > 0.95
    assert varying + 0.1 < half < steady - 0.1


def test_cli_writes_hpa_format_and_resumes(synth_dir, capsys):
    train = pd.read_csv(synth_dir / "train.csv")
    assert list(train.columns) == ["ID", "Label"] and len(train) == 4
    sample = pd.read_csv(synth_dir / "sample_submission.csv")
    assert list(sample.columns) == ["ID", "ImageWidth", "ImageHeight", "PredictionString"] and len(sample) == 4
    cells = pd.read_csv(synth_dir / "truth" / "cells.csv", dtype={"Label": str})
    assert list(cells.columns) == ["ID", "split", "cell_id", "Label"]
    for label in cells["Label"]:
        parse_labels(label)
    truth = Truth.load(str(synth_dir / "truth"), "test")
    for image_id in truth.images["ID"]:
        img = read_image(str(synth_dir / "test"), image_id)
        mask = truth.mask(image_id)
        assert img.shape == (256, 256, 4) and mask.dtype == np.uint16
        assert set(np.unique(mask)) - {0} == set(truth.cell_labels[image_id])
    preview = cv2.imread(str(synth_dir / "preview.png"))
    assert preview is not None and preview.shape[0] == 768

    before = (synth_dir / "truth" / "cells.csv").read_text()
    assert main(["--out", str(synth_dir), "--n-train", "4", "--n-test", "4", "--size", "256", "--seed", "3"]) == 0
    assert "8 already complete" in capsys.readouterr().out
    assert (synth_dir / "truth" / "cells.csv").read_text() == before
    assert main(["--out", str(synth_dir), "--n-train", "4", "--n-test", "4", "--size", "256", "--seed", "4"]) == 2


def test_mixed_sizes(tmp_path):
    assert main(["--out", str(tmp_path), "--n-train", "0", "--n-test", "6", "--size", "128,192", "--seed", "1"]) == 0
    sizes = set(pd.read_csv(tmp_path / "truth" / "images.csv")["ImageWidth"])
    assert sizes == {128, 192}
    # the harder setting is part of a run's parameters: another one in the same folder is refused,
    # and --overwrite starts over (no old pixels or masks pass for the new run's)
    args = ["--out", str(tmp_path), "--n-train", "0", "--n-test", "4", "--size", "128,192", "--seed", "1"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "test").glob("*_green.png")}
    assert main([*args, "--label-mix", "kaggle2021", "--texture-scale", "0.5"]) == 2
    assert main([*args, "--label-mix", "kaggle2021", "--texture-scale", "0.5", "--overwrite"]) == 0
    after = {p.name: p.read_bytes() for p in (tmp_path / "test").glob("*_green.png")}
    assert len(after) == 4 and all(after[name] != before[name] for name in after)  # the 4 of 6 kept are new
    truth = Truth.load(str(tmp_path / "truth"), "test")
    for image_id in truth.images["ID"]:  # masks and labels of the new run agree
        assert set(np.unique(truth.mask(image_id))) - {0} == set(truth.cell_labels[image_id])
    assert len(list((tmp_path / "truth").glob("*_cells.png"))) == 4  # the two beyond --n-test 4 are gone
