"""The external-data download against a local HTTP server: no test touches the network."""

import http.server
import threading
import time
from collections import Counter

import cv2
import numpy as np
import pandas as pd
import pytest

from hpa_tf.download import DownloadConfig, download
from hpa_tf.download.dedup import MIN_CORRELATION, fingerprint
from hpa_tf.download.fetch import RetryPolicy
from hpa_tf.io import read_image, read_label_table, scan_image_ids
from hpa_tf.io.images import CHANNELS
from conftest import SAMPLE_512, SAMPLE_512_ID


def _jpeg(plane: np.ndarray, quality: int = 92) -> bytes:
    return cv2.imencode(".jpg", plane, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


class _Server:
    """Serves ``files`` (path -> bytes); ``rules`` (path -> list of behaviours, one per request,
    the last repeating): "ok", "slow", "500", "503", "404", "cut" (connection cut), "corrupt" (a
    truncated file whose length header agrees)."""

    def __init__(self, files: dict[str, bytes], rules: dict[str, list[str]]):
        self.files, self.rules, self.hits = files, rules, Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.hits[self.path] += 1
                plan = server.rules.get(self.path, ["ok"])
                what = plan[min(server.hits[self.path], len(plan)) - 1]
                body = server.files.get(self.path)
                if body is None or what == "404":
                    self.send_error(404)
                    return
                if what in ("500", "503"):
                    self.send_error(int(what))
                    return
                if what == "slow":
                    time.sleep(1.0)  # longer than the client's timeout
                if what == "corrupt":
                    body = body[: len(body) // 2]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if what == "cut" else body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture()
def hpa_server(synth_dir):
    test_ids = scan_image_ids(str(synth_dir / "test"))
    train_id = scan_image_ids(str(synth_dir / "train"))[0]
    sources = {f"1/A{k}_1": read_image(str(synth_dir / "test"), i) for k, i in enumerate(test_ids)}
    # the same field as a training image, served as JPEG at another size: a duplicate by content
    twin = read_image(str(synth_dir / "train"), train_id)
    sources["2/B1_1"] = cv2.resize(twin, (200, 200), interpolation=cv2.INTER_AREA)
    sources["2/B2_1"] = sources["1/A0_1"]  # listed twice under two names
    files = {f"/{name}_{c}.jpg": _jpeg(img[..., k]) for name, img in sources.items() for k, c in enumerate(CHANNELS)}
    rules = {
        "/1/A1_1_red.jpg": ["500"],  # always fails: an error after every retry
        "/1/A2_1_green.jpg": ["slow", "ok"],  # a timeout, then fine
        "/1/A2_1_blue.jpg": ["503", "ok"],  # flaky
        "/1/A3_1_blue.jpg": ["corrupt"],  # a truncated file, every time
        "/1/A0_1_yellow.jpg": ["cut", "ok"],  # the connection drops once
    }
    files.pop("/2/B2_1_yellow.jpg")  # missing: 404, no retry
    server = _Server(files, rules)
    rows = [(f"{server.url}/1/A0_1", "U-2 OS", "False", "0|16"), (f"{server.url}/1/A1_1", "U-2 OS", "False", "5"),
            (f"{server.url}/1/A2_1", "A-431", "False", "11"), (f"{server.url}/1/A3_1", "U-2 OS", "False", "2"),
            (f"{server.url}/2/B1_1", "U-2 OS", "False", "7"), (f"{server.url}/2/B2_1", "U-2 OS", "False", "0"),
            (f"{server.url}/3/C1_1", "U-2 OS", "True", "0")]  # in the competition's train set: never fetched
    yield server, rows, train_id
    server.close()


def _table(path, rows):
    lines = ["Image\tCellline\tin_trainset\tLabel_idx"] + ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_download_retries_checks_dedups_and_resumes(hpa_server, synth_dir, tmp_path):
    server, rows, train_id = hpa_server
    out = tmp_path / "external"
    cfg = DownloadConfig(table=_table(tmp_path / "kaggle_2021.tsv", rows), out=str(out), workers=4, size=128,
                         dedup_against=str(synth_dir / "train"), policy=RetryPolicy(attempts=3, timeout=0.4, backoff=0.01))
    counts = download(cfg)
    assert counts == {"ok": 2, "duplicate": 1, "error": 3, "skipped_done": 0}
    table = read_label_table(str(out / "train.csv"))
    assert table["ID"].tolist() == ["1_A0_1", "1_A2_1"]  # the slow and the flaky one made it
    assert table["labels"].tolist() == [[0, 16], [11]] and table["Cellline"].tolist() == ["U-2 OS", "A-431"]
    image = read_image(str(out / "train"), "1_A2_1")
    assert image.shape == (128, 128, 4) and image.dtype == np.uint8
    errors = pd.read_csv(out / "errors.csv").set_index("ID")["error"]
    assert "HTTP 500" in errors["1_A1_1"] and "failed 3 times" in errors["1_A1_1"]
    assert "truncated JPEG" in errors["1_A3_1"]
    assert server.hits["/1/A0_1_yellow.jpg"] == 2
    assert "HTTP 404" in errors["2_B2_1"] and server.hits["/2/B2_1_yellow.jpg"] == 1  # permanent: no retry
    assert pd.read_csv(out / "duplicates.csv")["duplicate_of"].tolist() == [f"training image {train_id}"]
    assert not any(p.startswith("/3/") for p in server.hits)  # in_trainset rows are skipped
    assert server.hits["/1/A1_1_red.jpg"] == 3

    # A rerun fetches nothing it has, retries the failures, and finds the duplicates again.
    server.rules["/1/A1_1_red.jpg"] = ["ok"]
    before = dict(server.hits)
    again = download(cfg)
    assert again["skipped_done"] == 3 and again["ok"] == 3 and again["error"] == 2
    assert server.hits["/1/A0_1_red.jpg"] == before["/1/A0_1_red.jpg"]
    assert read_label_table(str(out / "train.csv"))["ID"].tolist() == ["1_A0_1", "1_A1_1", "1_A2_1"]
    # 2_B2_1 is 1_A0_1 under another name: once its yellow file exists, it is a duplicate, not a copy
    server.files["/2/B2_1_yellow.jpg"] = server.files["/1/A0_1_yellow.jpg"]
    third = download(cfg)
    assert third["duplicate"] == 2 and "downloaded image 1_A0_1" in pd.read_csv(out / "duplicates.csv").to_string()


def test_fingerprints_tell_fields_apart_and_survive_jpeg(synth_dir):
    ids = scan_image_ids(str(synth_dir / "train")) + scan_image_ids(str(synth_dir / "test"))
    images = [read_image(str(synth_dir / ("train" if k < 4 else "test")), i) for k, i in enumerate(ids)]
    real = read_image(str(SAMPLE_512), SAMPLE_512_ID)
    images += [real, np.rot90(real).copy()]  # a real field, and a different one with the same content
    prints = [fingerprint(img) for img in images]
    others = [float(a @ b) for k, a in enumerate(prints) for b in prints[k + 1:]]
    assert max(others) < MIN_CORRELATION - 0.2, max(others)
    for img, f in zip(images, prints):
        jpg = np.stack([cv2.imdecode(np.frombuffer(_jpeg(img[..., k], 75), np.uint8), 0) for k in range(4)], -1)
        assert float(fingerprint(cv2.resize(jpg, (300, 300))) @ f) > MIN_CORRELATION + 0.03


def test_the_published_list_reads_as_is_and_failures_mean_a_non_zero_exit(hpa_server, tmp_path, capsys):
    """kaggle_2021.tsv as published: comma-separated despite its name, rows with no 2021 class
    (empty Label_idx) skipped and counted (issue 22, item 2); a partial download exits 1, a rerun with
    another --size is refused, --size and --limit are range-checked (issue 23, item 16)."""
    from hpa_tf.download.__main__ import main

    server, rows, _ = hpa_server
    lines = ["Image,Gene,Cellline,Label,in_trainset,Label_idx"]
    for url, line, trainset, label in rows[:3]:
        lines.append(f"{url},ENSG0001,{line},Nucleoplasm,{trainset},{label}")
    lines.append(f"{server.url}/9/Z1_1,ENSG0002,U-2 OS,Cytokinetic bridge,False,")  # no 2021 class
    for name in ("kaggle_2021.tsv", "tab_copy.tsv"):
        path = tmp_path / name
        text = "\n".join(lines) + "\n"
        path.write_text(text if name == "kaggle_2021.tsv" else text.replace(",", "\t"))
        table = read_label_table(str(path))
        assert table["ID"].tolist() == ["1_A0_1", "1_A1_1", "1_A2_1"]
        assert "1 of 4 rows have no 2021 class (empty Label_idx) and are skipped" in table.attrs["label_report"]
    out = tmp_path / "ext"
    args = ["--list", str(tmp_path / "kaggle_2021.tsv"), "--out", str(out), "--size", "128", "--workers", "2",
            "--retries", "2", "--timeout", "0.5", "--backoff", "0.01"]
    assert main(args) == 1  # 1_A1_1's red file always fails
    err = capsys.readouterr()
    assert "1 of 4 rows have no 2021 class" in err.out
    assert "error: 1 of 3 images failed to download" in err.err
    assert read_label_table(str(out / "train.csv"))["ID"].tolist() == ["1_A0_1", "1_A2_1"]
    # another size into the same folder: refused in one line, nothing written
    with pytest.raises(ValueError, match="--size 128 \\(now 256\\)"):
        main([*args[:4], "--size", "256"])
    assert read_image(str(out / "train"), "1_A0_1").shape == (128, 128, 4)
    for bad in (["--size", "-5"], ["--size", "8"], ["--limit", "-1"]):
        with pytest.raises(SystemExit):
            main([*args[:4], *bad])
