"""`aimc compare`: the HTML report holds the right numbers and renders in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from aimc.eval.report import compare, write_summary
from aimc.eval.runner import run_suite

from test_eval_runner import ScriptedAgent, toy_suite


class WeakAgent(ScriptedAgent):
    """Only ever chops wood, whatever it is told."""

    def __init__(self, weights):
        super().__init__()
        self.weights = weights

    def describe(self):
        return {"kind": "weak", "weights": self.weights, "cond_scale": 0}

    def act(self, frames, goals, first):
        return {"action": np.where(goals.sum(1) > 0, 1, 0).astype(np.int64)}


class GoodAgent(ScriptedAgent):
    def __init__(self, weights):
        super().__init__()
        self.weights = weights

    def describe(self):
        return {"kind": "good", "weights": self.weights, "cond_scale": 6}


def _train_run(root: Path, losses: list[float]) -> str:
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "last.safetensors").write_bytes(b"")
    with open(root / "metrics.jsonl", "w") as f:
        for i, loss in enumerate(losses):
            f.write(json.dumps({"step": i * 10, "frames": i * 100, "train/loss": loss, "train/lr": 1e-4}) + "\n")
    return str(root / "checkpoints" / "last.safetensors")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    suite = toy_suite(episodes=6)
    before = WeakAgent(_train_run(tmp / "pretrained", [3.0, 2.5, 2.2, 2.1]))
    after = GoodAgent(_train_run(tmp / "finetuned", [2.1, 1.6, 1.2, 0.9]))
    for name, agent in (("before", before), ("after", after)):
        run_suite(suite, agent, tmp / name, num_envs=4, videos=1, video_scale=8, progress=False)
        write_summary(tmp / name, suite)
    html_path, md_path = compare([tmp / "before", tmp / "after"], tmp / "report")
    return tmp, html_path, md_path


def test_report_numbers(report):
    tmp, html_path, md_path = report
    md = md_path.read_text()
    # before: walk 0/6, after 6/6 -> delta +1.00, significant
    assert "| walk | 0.00 [0.00, 0.39] (0/6) | 1.00 [0.61, 1.00] (6/6) | +1.00" in md
    assert "| wood | 1.00 [0.61, 1.00] (6/6) | 1.00 [0.61, 1.00] (6/6) | +0.00" in md
    page = html_path.read_text()
    assert page.count("<svg") >= 3  # bars, unconditioned bars, training curve(s)
    assert "train/loss" in page and "data:image/png;base64," in page and "Instruction matrix" in page
    assert "砍 wood" in page  # Chinese phrasing listed
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def render_in_chromium(html_path: Path, tmp: Path, width: int = 1200, height: int = 2400) -> tuple[str, np.ndarray]:
    """The page as headless Chromium renders it: (its DOM after loading, a screenshot as RGB
    array). Skips the test when Chromium is not installed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("chromium is not installed (CI installs it with `apt-get install -y chromium`)")
    shot = tmp / "report.png"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chrome-profile'}"]
    subprocess.run(flags + [f"--screenshot={shot}", f"--window-size={width},{height}", "--hide-scrollbars",
                            html_path.as_uri()], check=True, timeout=120, capture_output=True)
    dom = subprocess.run(flags + ["--dump-dom", html_path.as_uri()], check=True, timeout=120, capture_output=True,
                         text=True).stdout
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] == height and img.shape[1] == width
    return dom, img


def test_report_renders_in_headless_chromium(report):
    tmp, html_path, _ = report
    dom, img = render_in_chromium(html_path, tmp)
    assert "Deltas against before" in dom and dom.count("<svg") >= 3 and dom.count("<rect") > 10
    # the bars are drawn: the palette's first two colours appear on the page
    for color in ((0x4C, 0x72, 0xB0), (0xDD, 0x84, 0x52)):
        assert (np.abs(img.astype(int) - color).sum(-1) < 12).sum() > 200, color


def test_compare_on_a_training_run_is_a_clear_error(tmp_path, capsys):
    from aimc.cli import main

    run = tmp_path / "policy"
    run.mkdir()
    (run / "summary.json").write_text('{"step": 4, "frames": 128, "best_val_loss": 1.6, "last": {}}')
    other = tmp_path / "broken"
    other.mkdir()
    (other / "summary.json").write_text("{not json")
    for folder, text in ((run, "a training run's summary"), (other, "not readable JSON")):
        assert main(["compare", str(folder), str(folder), "--out", str(tmp_path / "report")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and text in err and "Traceback" not in err
