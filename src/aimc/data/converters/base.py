"""Running conversions: jobs in parallel processes, resume, progress, summary, quarantine list."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from aimc.data.store import EpisodeStore, VideoSettings
from aimc.utils.io import atomic_write_text

QUARANTINE_FILE = "quarantine.json"


@dataclasses.dataclass
class Job:
    """One episode to convert: its id in the store and where its source files are."""

    episode_id: str
    sources: dict[str, str]  # role -> path, e.g. {"video": ".../x.mp4", "jsonl": ".../x.jsonl"}
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class JobResult:
    episode_id: str
    status: str  # "converted" | "skipped" | "failed"
    reason: str = ""
    frames: int = 0
    sources: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Summary:
    results: list[JobResult]
    seconds: float

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def converted(self) -> int:
        return self.count("converted")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if r.status == "failed"]

    def frames(self) -> int:
        return sum(r.frames for r in self.results if r.status == "converted")


# A converter function: (job, store) -> (frames converted, ...) ; raises on bad input.
ConvertFn = Callable[[Job, EpisodeStore], int]


def _run_one(fn: ConvertFn, job: Job, root: str, video: VideoSettings, embed_dtype: str) -> JobResult:
    store = EpisodeStore(root, video=video, embed_dtype=embed_dtype)
    try:
        n = fn(job, store)
        return JobResult(job.episode_id, "converted", frames=n, sources=job.sources)
    except Exception as e:  # noqa: BLE001 - every failure is reported per episode, never fatal
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return JobResult(job.episode_id, "failed", f"{type(e).__name__}: {msg}"[:500], sources=job.sources)


def run_jobs(
    jobs: Sequence[Job],
    fn: ConvertFn,
    store: EpisodeStore,
    workers: int = 1,
    resume: bool = True,
    progress: bool = True,
    pre_failed: Sequence[JobResult] = (),
    description: str = "converting",
) -> Summary:
    """Convert every job into ``store``; returns a summary (never raises for a bad episode).

    With ``resume`` an episode whose directory exists and matches its meta.json is skipped.
    ``pre_failed`` are problems found before conversion (e.g. a video without its jsonl); they
    go into the summary and the quarantine list too. Run from one process per store at a time.
    """
    t0 = time.time()
    store.create()
    store.clean_tmp()  # leftovers of an interrupted earlier run
    results: list[JobResult] = list(pre_failed)
    todo: list[Job] = []
    seen: set[str] = set()
    for job in jobs:
        if job.episode_id in seen:
            results.append(JobResult(job.episode_id, "failed", "duplicate episode id (two sources share a name)", sources=job.sources))
            continue
        seen.add(job.episode_id)
        if resume and store.has_episode(job.episode_id, verify=True):
            results.append(JobResult(job.episode_id, "skipped", "already in the store", sources=job.sources))
        else:
            todo.append(job)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(description, total=len(todo))
        if workers <= 1 or len(todo) <= 1:
            for job in todo:
                results.append(_run_one(fn, job, str(store.root), store.video, store.embed_dtype))
                bar.advance(task)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
                futures = {
                    pool.submit(_run_one, fn, job, str(store.root), store.video, store.embed_dtype): job for job in todo
                }
                for fut in as_completed(futures):
                    job = futures[fut]
                    try:
                        results.append(fut.result())
                    except Exception as e:  # noqa: BLE001 - a worker died (e.g. out of memory)
                        results.append(JobResult(job.episode_id, "failed", f"worker crashed: {type(e).__name__}: {e}", sources=job.sources))
                    bar.advance(task)
    summary = Summary(results, time.time() - t0)
    write_quarantine(store, summary)
    return summary


def write_quarantine(store: EpisodeStore, summary: Summary) -> Path:
    """Keep ``<store>/quarantine.json`` = episodes that failed (minus those now converted)."""
    path = store.root / QUARANTINE_FILE
    old: dict[str, dict] = {}
    if path.is_file():
        try:
            old = {q["episode_id"]: q for q in json.loads(path.read_text(encoding="utf-8"))}
        except (ValueError, KeyError, TypeError):
            old = {}
    for r in summary.results:
        if r.status == "failed":
            old[r.episode_id] = {"episode_id": r.episode_id, "reason": r.reason, "sources": r.sources}
        else:
            old.pop(r.episode_id, None)
    atomic_write_text(path, json.dumps(sorted(old.values(), key=lambda q: q["episode_id"]), indent=1) + "\n")
    return path


def print_summary(summary: Summary, store: EpisodeStore, max_failures: int = 20) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{summary.converted}[/] converted ({summary.frames():,} frames), [bold]{summary.skipped}[/] skipped "
        f"(already in the store), [bold]{len(summary.failed)}[/] failed, in {summary.seconds:.1f} s -> {store.root}"
    )
    if summary.failed:
        table = Table("episode", "reason", title="failed episodes (also listed in quarantine.json)")
        for r in summary.failed[:max_failures]:
            table.add_row(r.episode_id, r.reason)
        console.print(table)
        if len(summary.failed) > max_failures:
            console.print(f"... and {len(summary.failed) - max_failures} more in {store.root / QUARANTINE_FILE}")


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))
