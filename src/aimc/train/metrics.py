"""Where training numbers go: ``metrics.jsonl``, TensorBoard, and a live progress line.

TensorBoard tags (the monitoring guide in docs/monitoring.md relies on them):

    train/loss  train/lr  train/grad_norm  train/weight_norm  train/frames_per_s
    train/uncond_fraction  val/loss  sys/gpu_mem_gib
    time/<name>_s  time/<name>_total_s  time/train_s   (periodic work, e.g. name = eval)
    eval/<task>/instructed[_low|_high]  eval/<task>/unconditioned[_low|_high]  eval/mean/...

Every record in ``metrics.jsonl`` is one JSON object with ``step``, ``frames``,
``time`` (seconds since the run started) and the scalars above.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path

from aimc.train.checkpoint import Progress
from aimc.train.config import LoggingConfig
from aimc.utils.io import atomic_write_text


class MetricsLogger:
    """Rank 0 writes; other ranks get a logger whose methods do nothing."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, *, enabled: bool, total_frames: int, start_frames: int = 0,
                 resume_step: int | None = None) -> None:
        """``cfg``: the run's ``logging`` section (TensorBoard, progress line). ``total_frames``:
        the run's length (progress and ETA). ``resume_step``: the run resumes after this step;
        records logged after it by the interrupted session are dropped (they will be logged
        again), in metrics.jsonl and TensorBoard alike."""
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.total_frames = total_frames
        self.last: dict[str, float] = {}
        self._t0 = time.perf_counter()
        self._f0 = start_frames
        self._tb = None
        self._bar = None
        self._last_line = ""
        if not enabled:
            return
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = start_frames + 1 if resume_step is not None else None  # x axis = frames
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=purge)
        path = self.run_dir / "metrics.jsonl"
        if resume_step is not None and path.is_file():
            keep = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in keep))
        self._jsonl = open(path, "a", encoding="utf-8")
        if cfg.progress and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn

            # the ETA is ours (training time only: periodic evaluation is left out), not rich's
            self._bar = Bar(
                TextColumn("[bold]train[/]"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
                transient=False,
            )
            self._task = self._bar.add_task("train", total=total_frames, completed=start_frames, info="", eta="-:--:--")
            self._bar.start()

    def note(self, text: str) -> None:
        if self.enabled:
            self._print(text)

    def warn(self, text: str) -> None:
        if self.enabled:
            warnings.warn(text, RuntimeWarning, stacklevel=2)
            self._print(f"warning: {text}")

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def scalars(self, progress: Progress, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.last.update(values)
        record = {"step": progress.step, "frames": progress.frames, "time": round(progress.wall_seconds, 3), **values}
        # strict JSON: a non-finite value (e.g. a diverged loss) is written as null
        record = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, global_step=progress.frames)
        if self._bar is None:
            self._last_line = self._line(progress)
            self._print(self._last_line)

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (spent on periodic work such as evaluation) out of the ETA."""
        self._t0 += seconds

    def _eta(self, progress: Progress) -> str | None:
        """Time left at the training speed of this session (periodic work left out)."""
        rate = (progress.frames - self._f0) / max(time.perf_counter() - self._t0, 1e-9)
        if rate <= 0 or progress.frames >= self.total_frames:
            return None
        eta = (self.total_frames - progress.frames) / rate
        return f"{int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}"

    def _line(self, progress: Progress) -> str:
        parts = [f"step {progress.step}", f"{progress.frames:,}/{self.total_frames:,} frames"]
        for key, fmt in (("train/loss", "loss {:.4f}"), ("val/loss", "val {:.4f}"), ("train/lr", "lr {:.2e}"),
                         ("train/grad_norm", "gnorm {:.2f}"), ("train/frames_per_s", "{:,.0f} fr/s")):
            if key in self.last:
                parts.append(fmt.format(self.last[key]))
        eta = self._eta(progress)
        if eta:
            parts.append(f"ETA {eta}")
        return " | ".join(parts)

    def progress(self, progress: Progress) -> None:
        if self._bar is not None:
            info = " ".join(p for p in self._line(progress).split(" | ")[2:5] if not p.startswith("ETA"))
            self._bar.update(self._task, completed=min(progress.frames, self.total_frames), info=info,
                             eta=self._eta(progress) or "-:--:--")

    def finish(self, progress: Progress) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=min(progress.frames, self.total_frames))
            self._bar.stop()
        line = self._line(progress)
        if line != self._last_line:  # the last logging step may already have printed it
            self._print(line)
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        self._jsonl.close()
