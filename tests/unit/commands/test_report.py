"""`budgetlora report`: one self-contained HTML page of evaluated tiny runs, checked as text and,
where Chromium is installed, in a headless browser (screenshot, console, sections, and that a
`<script>` inside a data text stays text)."""

from __future__ import annotations

import base64
import csv
import html.parser
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from budgetlora.cli import main
from budgetlora.config import load_config
from budgetlora.training.trainer import train
from tiny import make_texts

EVIL = "<script>document.title='pwned'</script>"
SECTIONS = ("command", "budget", "curves", "evaluation", "calibration", "errors", "sample")


def _evil_eval_csv(path: Path) -> Path:
    """Labelled rows whose every text carries a script tag; every third label is wrong on purpose,
    so there are misclassified rows to list whatever the model learnt."""
    texts, labels = make_texts(60, seed=8)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for i, (t, y) in enumerate(zip(texts, labels)):
            w.writerow([(y + 1) % 4 + 1 if i % 3 == 0 else y + 1, f"{EVIL} {t[:20]}", t[20:]])
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tiny_train_csv):
    root = tmp_path_factory.mktemp("report")
    data = _evil_eval_csv(root / "evil.csv")
    out = []
    for name, r in (("small-r2", 2), ("large-r8", 8)):
        folder = root / name
        train(load_config(None, {
            "model": str(tiny_model_dir), "train_file": str(tiny_train_csv), "output_dir": str(folder),
            "epochs": 1, "batch_size": 16, "lr": 5e-3, "r": r, "head": "linear", "log_every": 2, "seed": 3,
        }))
        out.append(folder)
    assert main(["evaluate", "--run", str(out[0]), "--data", str(data), "--calibrate"]) == 0
    assert main(["evaluate", "--run", str(out[1]), "--data", str(data)]) == 0  # not calibrated
    return out


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.title = ""
        self.texts: list[str] = []  # text nodes, character references resolved
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_title = tag == "title"

    def handle_data(self, data):
        self.texts.append(data)
        if self._in_title:
            self.title += data

    def handle_endtag(self, tag):
        self._in_title = False


def _report(runs, tmp_path, *extra) -> tuple[Path, str]:
    out = tmp_path / "report.html"
    assert main(["report", *map(str, runs), "--output", str(out), *extra]) == 0
    return out, out.read_text(encoding="utf-8")


def test_report_of_two_runs_has_every_section_and_no_outside_resource(runs, tmp_path, capsys):
    from PIL import Image

    _, page = _report(runs, tmp_path)
    assert "missing temperature scaling" in capsys.readouterr().err  # the second run is not calibrated
    parser = _Tags()
    parser.feed(page)
    classes = [a.get("class") for t, a in parser.tags if t == "section"]
    assert classes.count("comparison") == 1 and classes.count("run") == 2
    for kind in SECTIONS:
        assert classes.count(kind) == 2, kind
    assert not [t for t, _ in parser.tags if t in ("script", "link", "iframe", "object", "embed")]
    images = [a["src"] for t, a in parser.tags if t == "img"]
    # per run: curves, confusion, reliability, sample; and the accuracy-vs-parameters plot
    assert len(images) == 2 * 4 + 1
    for src in images:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    # the data's script is text: escaped in the errors table, never markup
    assert EVIL not in page and html_escaped(EVIL) in page and any(EVIL in text for text in parser.texts)
    assert parser.title == "budgetlora report: small-r2, large-r8"
    for run in runs:
        assert f"budgetlora train" in page and (run / "config.yaml").read_text().splitlines()[0] in page


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_report_shows_the_numbers_of_the_run_files(runs, tmp_path):
    import json

    _, page = _report(runs[:1], tmp_path)
    ev = json.loads((runs[0] / "eval" / "evil.json").read_text())
    fit = json.loads((runs[0] / "calibration.json").read_text())
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert f"{ev['accuracy']:.4f}" in page and f"{ev['calibration']['ece']:.4f}" in page
    assert f"{ev['calibration']['ece_calibrated']:.4f}" in page and f"{fit['temperature']:.4f}" in page
    assert f"{metrics['trainable_params']:,}" in page
    with open(runs[0] / "eval" / "evil_errors.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert html_escaped(first["text"]) in page
    assert 'class="comparison"' not in page  # one run: no comparison


def test_errors_option_limits_the_rows_shown(runs, tmp_path):
    _, page = _report(runs[:1], tmp_path, "--errors", "3")
    errors = page.split('<section class="errors">')[1].split("</section>")[0]
    assert errors.count("<tr>") == 1 + 3


def test_unevaluated_run_is_one_line_with_the_command(runs, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(runs[0], bare)
    shutil.rmtree(bare / "eval")
    out = tmp_path / "r.html"
    assert main(["report", str(bare), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not evaluated yet" in err and f"budgetlora evaluate --run {bare}" in err
    assert not out.exists()
    assert main(["report", str(tmp_path / "nothing"), "--output", str(out)]) == 2
    assert "not a finished budgetlora run" in capsys.readouterr().err


def test_existing_output_is_kept_without_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    out.write_text("mine")
    assert main(["report", str(runs[0]), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and out.read_text() == "mine"
    assert main(["report", str(runs[0]), "--output", str(out), "--overwrite"]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")


# ---------------------------------------------------------------------------------------------
# In a browser: Debian's chromium, headless.
# ---------------------------------------------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found:
        pytest.skip("chromium is not installed (apt-get install chromium); the page is checked in a browser only where it is")
    return found


def _browse(page: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--enable-logging=stderr", "--v=0", "--allow-file-access-from-files"]
    return subprocess.run([_chromium(), *flags, *args, page.resolve().as_uri()], capture_output=True, text=True, timeout=120)


def _console(done: subprocess.CompletedProcess) -> list[str]:
    """The page's console messages (errors and everything else) from chromium's log."""
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def test_console_check_sees_a_console_error(tmp_path):
    control = tmp_path / "control.html"
    control.write_text("<html><body><script>console.error('boom')</script></body></html>")
    assert any("boom" in line for line in _console(_browse(control, "--dump-dom")))


def test_report_in_chromium(runs, tmp_path):
    from PIL import Image

    out, _ = _report(runs, tmp_path)
    shot = tmp_path / "report.png"
    done = _browse(out, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars")
    assert done.returncode == 0 and shot.is_file(), done.stderr[-500:]
    assert not _console(done)
    with Image.open(shot) as img:
        assert img.size == (1280, 2400)
        assert len(img.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50  # not a blank page
    dom = _browse(out, "--dump-dom")
    assert not _console(dom)
    parser = _Tags()
    parser.feed(dom.stdout)
    assert parser.title == "budgetlora report: small-r2, large-r8"  # the data's script did not run
    classes = [a.get("class") for t, a in parser.tags if t == "section"]
    for kind in SECTIONS + ("comparison",):
        assert kind in classes, kind
    assert not [t for t, _ in parser.tags if t == "script"]
    assert any(EVIL in text for text in parser.texts)  # shown as text on the page
