"""The overview page (figures/overview.py): rows, thumbnails, skipped files, sorting; loaded in
headless Chromium where it is installed (Debian's ``chromium``)."""

import html
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from dr_saliency.figures import overview

CHROMIUM = shutil.which("chromium")


def _figure(path, seed):
    rgb = np.random.default_rng(seed).integers(0, 255, (60, 120, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return str(path)


def _page(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    rows = [
        {"id": "eye<1>", "p0": 3.2, "pn": 1.1, "iterations": 3, "stop_reason": "normal",
         "figure": _figure(figures / "eye1.png", 1),
         "candidates": [{"x": 10.0, "y": 20.5, "score": 0.004}]},
        {"id": "eye2", "p0": 0.4, "pn": 0.4, "iterations": 0, "stop_reason": "not_referable",
         "figure": _figure(figures / "eye2.png", 2), "candidates": []},
        {"id": "eye3", "p0": 1.6, "pn": 1.2, "iterations": 1, "stop_reason": "normal",
         "figure": ""},
    ]
    path = overview.write_overview(str(tmp_path / "index.html"), rows, title="test page",
                                   skipped=[("broken.jpg", "could not decode the file")],
                                   notes=["a note"])
    return path


def test_page_lists_rows_thumbnails_and_skipped_files(tmp_path):
    path = _page(tmp_path)
    page = open(path, encoding="utf-8").read()
    assert page.count("<tr>") == 3 + 1 + 1 + 1  # 3 rows, 2 headers, 1 skipped
    # Self-contained: thumbnails embedded, full figures linked relatively, no network.
    assert page.count('src="data:image/jpeg;base64,') == 2
    assert 'href="figures/eye1.png"' in page and "http" not in page
    assert "no figure" in page
    assert html.escape("eye<1>") in page and "eye<1>" not in page
    # Grade, stage name and referable from p0 by core/grades: 3.2 -> 3, 0.4 -> 0, 1.6 -> 2.
    keys = re.findall(r'<td class="num" data-key="(\d)">', page)
    assert keys[0::2] == ["3", "0", "2"]  # grade, then iterations
    assert "severe NPDR" in page and "no DR" in page and "moderate NPDR" in page
    assert page.count('<span class="referable">referable</span>') == 2
    assert "broken.jpg" in page and "could not decode the file" in page
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".") or f.endswith(".tmp")]


def test_page_refuses_a_row_without_its_prediction(tmp_path):
    with pytest.raises(ValueError, match=r"Expected rows\[0\] to be a dict with id and p0\. "
                                         r"Received: \{'id': 'x'\}"):
        overview.write_overview(str(tmp_path / "index.html"), [{"id": "x"}], title="t")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_page_in_headless_chromium(tmp_path):
    path = _page(tmp_path)
    url = "file://" + os.path.abspath(path)
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}"]
    # Click the grade header once (ascending) before the DOM is dumped: the sorting script runs.
    script = tmp_path / "sorted.html"
    script.write_text(open(path, encoding="utf-8").read().replace(
        "</body>", "<script>document.querySelectorAll('th')[2].click();</script></body>"))
    for target, order in ((url, ["eye&lt;1&gt;", "eye2", "eye3"]),
                          ("file://" + str(script), ["eye2", "eye3", "eye&lt;1&gt;"])):
        proc = subprocess.run(base + ["--dump-dom", target], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        dom = proc.stdout
        body = dom[dom.index('<table class="sortable"'):dom.index("</table>")]
        assert re.findall(r'data-key="(eye[^"]*)"', body) == order
        assert body.count('<img class="thumb"') == 2
    shot = tmp_path / "page.png"
    proc = subprocess.run(base + ["--window-size=1200,900", f"--screenshot={shot}", url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 900)
        # Something is drawn (not a blank or an error page): the thumbnails' noise is there.
        assert np.asarray(image.convert("L")).std() > 10
