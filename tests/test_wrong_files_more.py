"""Every other file argument of every command answers a wrong file with a clear error.

tests/test_wrong_files.py covers the checkpoint and data files; this covers the rest: YAML
configs, suites and search spaces, goal videos, episode stores and source folders, and output
paths (a folder where a file is written, a file where a folder is made). A text file, an empty
file, a directory and a truncated file (each where it is wrong): exit code 2, one ``error:``
line that names the path, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_agent import make_bundle
from test_wrong_files import _tiny_cfg

from aimc.checkpoints.vpt import save_policy
from aimc.cli import main
from aimc.models.vpt import STEVE1Policy

KINDS = ["text", "empty", "directory", "truncated"]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """Files of every kind the commands read, made once: the wrong ones are cut from them."""
    from aimc.agent.video import VideoWriter

    root = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    weights, model = root / "ok.weights", root / "ok.model"
    save_policy(STEVE1Policy(_tiny_cfg()), weights, model_path=model)
    bundle = make_bundle(root / "bundle")
    video = root / "clip.mp4"
    with VideoWriter(video, scale=1, overlay_text=False) as v:
        for i in range(20):
            v.add(np.full((64, 64, 3), 10 * i, np.uint8))
    pairs = root / "pairs.npz"
    np.savez(pairs, text_embeddings=np.zeros((8, 16), np.float32), visual_embeddings=np.zeros((8, 16), np.float32))
    yaml = root / "cfg.yaml"
    yaml.write_text("data:\n  T: 16\n  stores: [a, b]\noptim:\n  lr: 1.0e-3\n")
    return {"weights": weights, "model": model, "bundle": bundle, "mineclip": bundle.parents[1] / "mineclip.safetensors",
            "prior": bundle.parents[1] / "prior.safetensors", "video": video, "pairs": pairs, "yaml": yaml}


def _bad(tmp: Path, name: str, kind: str, good: dict[str, Path]) -> Path:
    p = tmp / "bad" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        p.write_text("these are my notes, not what the command reads\n")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "directory":
        p.mkdir()
    else:  # the first half of a real file of that kind
        source = {".yaml": good["yaml"], ".mp4": good["video"], ".safetensors": good["mineclip"]}[p.suffix]
        data = source.read_bytes()
        p.write_bytes(data[: len(data) // 2] if p.suffix != ".yaml" else data[:28])  # ends in "stores: [a,"
    return p


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def _assert_clear(rc: int, err: str, path: Path, *must: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2, err
    assert "Traceback" not in err and len(errors) == 1, err
    assert str(path) in errors[0], err
    for text in must:
        assert text in errors[0], err


# ---------------------------------------------------------------------------- files that are read

READ = {
    "train --preset": ("p.yaml", lambda f, g, t: ["train", "--preset", f, "--out", str(t / "run")]),
    "train eval.suite": ("s.yaml", lambda f, g, t: ["train", "--preset", "tiny", "eval.every_frames=32", f"eval.suite={f}",
                                                    f"eval.mineclip={g['mineclip']}", "--out", str(t / "run")]),
    "train eval.mineclip": ("c.safetensors", lambda f, g, t: ["train", "--preset", "tiny", "eval.every_frames=32",
                                                              f"eval.mineclip={f}", "--out", str(t / "run")]),
    "train eval.prior": ("p.safetensors", lambda f, g, t: ["train", "--preset", "tiny", "eval.every_frames=32",
                                                           f"eval.mineclip={g['mineclip']}", f"eval.prior={f}",
                                                           "--out", str(t / "run")]),
    "mineclip train --config": ("c.yaml", lambda f, g, t: ["mineclip", "train", "--config", f, "--out", str(t / "mc")]),
    "prior train --config": ("c.yaml", lambda f, g, t: ["prior", "train", "--config", f, "--data", str(g["pairs"]),
                                                        "--fast", "--out", str(t / "pr")]),
    "tune --preset": ("p.yaml", lambda f, g, t: ["tune", "--preset", f, "--space", "crafter", "--trials", "1",
                                                 "--out", str(t / "tune")]),
    "tune --space": ("sp.yaml", lambda f, g, t: ["tune", "--preset", "crafter", "--space", f, "--trials", "1",
                                                 "--out", str(t / "tune")]),
    "eval --suite": ("s.yaml", lambda f, g, t: ["eval", "--baseline", "random", "--suite", f, "--out", str(t / "ev")]),
    "eval --mineclip": ("c.safetensors", lambda f, g, t: ["eval", "--weights", str(g["bundle"]), "--mineclip", f,
                                                          "--device", "cpu", "--out", str(t / "ev")]),
    "eval --prior": ("p.safetensors", lambda f, g, t: ["eval", "--weights", str(g["bundle"]), "--prior", f,
                                                       "--device", "cpu", "--out", str(t / "ev")]),
    "run --mineclip": ("c.safetensors", lambda f, g, t: ["run", "--weights", str(g["bundle"]), "--mineclip", f,
                                                         "--prompt", "x", "--device", "cpu", "--video", str(t / "r.mp4")]),
    "run --prior": ("p.safetensors", lambda f, g, t: ["run", "--weights", str(g["bundle"]), "--prior", f,
                                                      "--prompt", "x", "--device", "cpu", "--video", str(t / "r.mp4")]),
    "run --goal-video": ("goal.mp4", lambda f, g, t: ["run", "--weights", str(g["bundle"]), "--goal-video", f,
                                                      "--device", "cpu", "--video", str(t / "r.mp4")]),
    "mineclip embed-text --prior": ("p.safetensors", lambda f, g, t: ["mineclip", "embed-text", "hi", "--weights",
                                                                      str(g["mineclip"]), "--prior", f]),
    "data convert contractor --mineclip": ("c.safetensors", lambda f, g, t: ["data", "convert", "contractor", str(t),
                                                                             str(t / "store"), "--mineclip", f]),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", list(READ))
def test_wrong_file_is_a_clear_error(tmp_path, good, command, kind, capsys):
    name, argv = READ[command]
    bad = _bad(tmp_path, name, kind, good)
    rc, err = _run(argv(str(bad), good, tmp_path), capsys)
    if command in ("eval --suite", "train eval.suite", "tune --space") and kind == "directory":
        # a folder is no suite / space file: looked up by name among the shipped ones, which it is not either
        _assert_clear(rc, err, bad, "shipped")
    else:
        _assert_clear(rc, err, bad)
    assert not (tmp_path / "run" / "checkpoints" / "latest").exists()


@pytest.mark.parametrize("kind", ["empty", "directory", "truncated"])
def test_yaml_config_errors_say_what_is_wrong(tmp_path, good, kind, capsys):
    bad = _bad(tmp_path, "p.yaml", kind, good)
    rc, err = _run(["train", "--preset", str(bad), "--out", str(tmp_path / "run")], capsys)
    _assert_clear(rc, err, bad, {"empty": "the file is empty", "directory": "is a directory",
                                 "truncated": "not valid YAML"}[kind])


# ---------------------------------------------------------------------------- resuming a damaged run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    from test_train_cli import D, POLICY, make_store

    from aimc.data.split import make_split

    root = tmp_path_factory.mktemp("resume")
    store = make_store(root / "store")
    make_split(store, val_fraction=0.25, seed=0)
    run = root / "run"
    assert main(["train", "--preset", "tiny", f"data.stores=[{store.root}]", f"model.goal_dim={D}", POLICY,
                 "schedule.n_frames=64", "schedule.warmup_frames=32", "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize("damage", ["config cut short", "config empty", "state cut short", "state empty",
                                    "run is a file", "run is an empty folder"])
def test_resuming_a_damaged_run_is_a_clear_error(finished_run, tmp_path, damage, capsys):
    import shutil

    run = tmp_path / "run"
    if damage == "run is a file":
        run.write_text("notes\n")
        named = run
    elif damage == "run is an empty folder":
        run.mkdir()
        named = run
    else:
        shutil.copytree(finished_run, run)
        named = run / "config.yaml" if damage.startswith("config") else run / "checkpoints" / "latest" / "state.pt"
        data = named.read_bytes()
        named.write_bytes(data[: len(data) // 3] if damage.endswith("cut short") else b"")
    rc, err = _run(["train", "--resume", str(run), "schedule.n_frames=96"], capsys)
    _assert_clear(rc, err, named)


# ---------------------------------------------------------------------------- folders that are read


STORE_COMMANDS = {
    "data embed": lambda s, g: ["data", "embed", s, "--mineclip", str(g["mineclip"]), "--device", "cpu"],
    "data split": lambda s, g: ["data", "split", s, "--val-fraction", "0.2"],
    "data check": lambda s, g: ["data", "check", s],
    "data stats": lambda s, g: ["data", "stats", s],
}


@pytest.mark.parametrize("kind", ["text", "empty", "empty folder", "unrelated folder"])
@pytest.mark.parametrize("command", list(STORE_COMMANDS))
def test_a_store_that_is_not_one_is_a_clear_error(tmp_path, good, command, kind, capsys):
    store = tmp_path / "store"
    if kind == "text":
        store.write_text("notes\n")
    elif kind == "empty":
        store.write_bytes(b"")
    else:
        store.mkdir()
        if kind == "unrelated folder":
            (store / "holiday.jpg").write_bytes(b"\xff\xd8")
    rc, err = _run(STORE_COMMANDS[command](str(store), good), capsys)
    _assert_clear(rc, err, store, "is a file" if kind in ("text", "empty") else "not an episode store")


@pytest.mark.parametrize("converter", ["steve1", "custom", "contractor"])
@pytest.mark.parametrize("kind", ["text file", "empty folder"])
def test_a_conversion_source_without_episodes_is_a_clear_error(tmp_path, converter, kind, capsys):
    src = tmp_path / "src"
    if kind == "text file":
        src.write_text("notes\n")
    else:
        src.mkdir()
    rc, err = _run(["data", "convert", converter, str(src), str(tmp_path / "store"), "--workers", "1"], capsys)
    _assert_clear(rc, err, src)
    assert not (tmp_path / "store").exists()


def test_an_evaluation_folder_with_a_damaged_meta_json_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "meta.json").write_text('{"suite": "crafter-co')
    args = ["eval", "--baseline", "random", "--tasks", "collect_wood", "--episodes", "1", "--max-steps", "2", "--quiet"]
    rc, err = _run([*args, "--out", str(out)], capsys)
    _assert_clear(rc, err, out / "meta.json", "new --out folder")


# ---------------------------------------------------------------------------- outputs


WRITE_FILE = {  # a folder where a file is written
    "run --video": ("v.mp4", lambda f, g, t: ["run", "--weights", str(g["bundle"]), "--prompt", "x", "--steps", "2",
                                              "--device", "cpu", "--video", f]),
    "mineclip embed-text --out": ("e.npy", lambda f, g, t: ["mineclip", "embed-text", "hi", "--weights",
                                                            str(g["mineclip"]), "--out", f]),
    "checkpoint convert output": ("o.safetensors", lambda f, g, t: ["checkpoint", "convert", str(g["weights"]), f,
                                                                    "--model", str(g["model"])]),
}

MAKE_DIR = {  # a file where a folder is made
    "train --out": lambda f, g, t: ["train", "--preset", "tiny", "--out", f],
    "eval --out": lambda f, g, t: ["eval", "--baseline", "random", "--out", f],
    "prior train --out": lambda f, g, t: ["prior", "train", "--data", str(g["pairs"]), "--fast", "--out", f],
    "mineclip train --out": lambda f, g, t: ["mineclip", "train", "--store", str(t), "--out", f],
    "tune --out": lambda f, g, t: ["tune", "--preset", "crafter", "--space", "crafter", "--trials", "1", "--out", f],
    "quickstart --out": lambda f, g, t: ["quickstart", "--fast", "--out", f],
    "data generate --out": lambda f, g, t: ["data", "generate", "--out", f, "--episodes", "1", "--workers", "1"],
    "data convert custom out": lambda f, g, t: ["data", "convert", "custom", str(t / "src"), f, "--workers", "1"],
}


@pytest.mark.parametrize("command", list(WRITE_FILE))
def test_a_folder_where_a_file_is_written_is_a_clear_error(tmp_path, good, command, capsys):
    name, argv = WRITE_FILE[command]
    target = tmp_path / name
    target.mkdir()
    rc, err = _run(argv(str(target), good, tmp_path), capsys)
    _assert_clear(rc, err, target, "is a directory")


@pytest.mark.parametrize("command", list(MAKE_DIR))
def test_a_file_where_a_folder_is_made_is_a_clear_error(tmp_path, good, command, capsys):
    if command == "data convert custom out":  # one valid episode to convert
        ep = tmp_path / "src" / "ep0"
        ep.mkdir(parents=True)
        (ep / "actions.jsonl").write_text('{"action": 0}\n')
        (ep / "video.mp4").write_bytes(good["video"].read_bytes())
    target = tmp_path / "out.txt"
    target.write_text("notes\n")
    rc, err = _run(MAKE_DIR[command](str(target), good, tmp_path), capsys)
    if command == "train --out":  # pre-flight lists every problem under one error line
        assert rc == 2 and err.startswith("error: cannot start training") and str(target) in err and "Traceback" not in err
        return
    _assert_clear(rc, err, target)
    assert target.read_text() == "notes\n"
