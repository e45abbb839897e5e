"""Reports: one evaluation as markdown, several side by side as a self-contained HTML page.

``aimc compare`` compares folders of one kind: evaluations, or training runs.

``aimc compare EVAL_A EVAL_B ...`` (e.g. before and after a fine-tune) reads each evaluation
folder written by ``aimc eval`` (``summary.json``, ``meta.json``, ``results.jsonl``, videos) and
the training run that produced each model (the closest folder above the weights that holds
``metrics.jsonl``), and writes

* ``report.html``: success bars with 95 % Wilson intervals per task, deltas against the first
  run with Newcombe intervals and p-values, lifts and the instruction matrix (built-in world),
  phrasing spread, training curves, and video thumbnails linking to the mp4 files. Everything is
  inline (SVG, CSS, PNG thumbnails as data URIs): the file can be mailed or attached alone.
* ``report.md``: the same numbers as markdown tables.

``aimc compare RUN_A RUN_B ...`` on training run folders written by ``aimc train``
(``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``README.md``) writes the same two files
with the runs' loss, validation and evaluation curves side by side (x = frames), their final
numbers, and the settings that differ (a diff of the resolved configs). A run still training (no
``summary.json`` yet) is compared as far as it got.

``aimc compare RUN_A RUN_B ...`` on continual runs written by ``aimc continual`` (``forgetting.json``)
draws their forgetting matrices (success of task i after stage j) side by side as heatmaps, with
each task's forgetting (best earlier - final) and the plans' settings.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimc.errors import UserError
from aimc.eval.metrics import difference, rate
from aimc.utils.io import atomic_write_text, make_dir

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


@dataclass
class EvalRun:
    """One evaluation folder, loaded for reporting."""

    name: str
    path: Path
    summary: dict
    meta: dict
    rows: list[dict]
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    train_dir: Path | None = None


def write_summary(out_dir: str | Path, suite) -> dict:
    """Summarise ``out_dir/results.jsonl`` into summary.json and summary.md; returns the summary."""
    from aimc.eval.metrics import summarize
    from aimc.eval.runner import read_results

    out_dir = Path(out_dir)
    summary = summarize(read_results(out_dir / "results.jsonl"), suite)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    atomic_write_text(out_dir / "summary.md", summary_markdown(summary))
    return summary


# ---------------------------------------------------------------------------- loading


def _find_train_dir(weights: str | None) -> Path | None:
    if not weights:
        return None
    p = Path(weights).resolve()
    for parent in list(p.parents)[:4]:
        if (parent / "metrics.jsonl").is_file():
            return parent
    return None


def read_curves(metrics_path: Path, max_points: int = 400, x_key: str = "step") -> dict[str, list[tuple[float, float]]]:
    """Numeric series of a ``metrics.jsonl`` keyed by name, x = ``x_key`` (``step`` or
    ``frames``; the line number where a record has none)."""
    series: dict[str, list[tuple[float, float]]] = {}
    try:
        lines = metrics_path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        x = rec.get(x_key, i)
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            continue
        for k, v in rec.items():
            if k in ("step", "time", "frames", "epoch") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if math.isfinite(v):
                series.setdefault(k, []).append((float(x), float(v)))
    for k, pts in series.items():
        if len(pts) > max_points:
            stride = math.ceil(len(pts) / max_points)
            series[k] = pts[::stride] + ([pts[-1]] if (len(pts) - 1) % stride else [])
    return series


def load_eval_run(path: str | Path, name: str | None = None) -> EvalRun:
    from aimc.eval.runner import read_results

    path = Path(path)
    sfile = path / "summary.json"
    if not sfile.is_file():
        raise UserError(
            f"{path}: no summary.json here; pass the folder that `aimc eval --out` wrote "
            "(run `aimc eval` again with the same --out to finish or re-summarise it)"
        )
    try:
        summary = json.loads(sfile.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{sfile}: not readable JSON ({e}); run `aimc eval` again with the same --out to rewrite it") from None
    if not isinstance(summary, dict) or "tasks" not in summary:
        what = ("a training run's summary (aimc train writes it)" if isinstance(summary, dict) and "best_val_loss" in summary
                else "not an evaluation summary")
        raise UserError(
            f"{path}: its summary.json is {what}; aimc compare reads evaluation folders: run "
            f"`aimc eval --weights {path / 'final.safetensors'} --suite SUITE --out EVAL` and compare the EVAL folders"
        )
    meta = _read_json_file(path / "meta.json", "run `aimc eval` again with a new --out") if (path / "meta.json").is_file() else {}
    if not isinstance(meta, dict):
        raise UserError(f"{path / 'meta.json'}: not what `aimc eval` writes (a JSON object); run `aimc eval` again with a new --out")
    train_dir = _find_train_dir((meta.get("agent") or {}).get("weights"))
    curves = read_curves(train_dir / "metrics.jsonl") if train_dir else {}
    return EvalRun(name or path.name, path, summary, meta, read_results(path / "results.jsonl"), curves, train_dir)


# ---------------------------------------------------------------------------- numbers


def _rate_of(entry: dict | None):
    if not entry:
        return None
    return rate(entry["successes"], entry["n"])


def _fmt_rate(entry: dict | None) -> str:
    if not entry or not entry["n"]:
        return "-"
    return f"{entry['rate']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}] ({entry['successes']}/{entry['n']})"


def _fmt_delta(d) -> str:
    if d is None or math.isnan(d.diff):
        return "-"
    star = " *" if d.significant else ""
    return f"{d.diff:+.2f} [{d.low:+.2f}, {d.high:+.2f}] p={d.p_value:.3f}{star}"


def summary_markdown(summary: dict) -> str:
    """One evaluation's summary as markdown tables."""
    lines = [f"# Evaluation: {summary['suite']}", "",
             f"{summary['episodes']} episodes ({summary['errors']} ended by env errors). "
             "Rates: successes/episodes with 95 % Wilson intervals.", ""]
    has_uncond = any(e.get("unconditioned") for e in summary["tasks"].values())
    head = "| task | success rule | instructed | steps to success (median) |"
    sep = "| --- | --- | --- | --- |"
    if has_uncond:
        head += " unconditioned | lift (95 % CI, p) |"
        sep += " --- | --- |"
    lines += [head, sep]
    for tid, e in summary["tasks"].items():
        med = e["steps_to_success"]["median"]
        row = f"| {tid} | {e['rule']} | {_fmt_rate(e['instructed'])} | {'-' if med is None else med} |"
        if has_uncond:
            lift = e.get("lift")
            lift_s = "-" if not lift or lift["diff"] is None or math.isnan(lift["diff"]) else (
                f"{lift['diff']:+.2f} [{lift['low']:+.2f}, {lift['high']:+.2f}] p={lift['p_value']:.3f}"
                + (" *" if lift["significant"] else ""))
            row += f" {_fmt_rate(e.get('unconditioned'))} | {lift_s} |"
        lines.append(row)
    if summary.get("lift_summary"):
        ls = summary["lift_summary"]
        mean = "-" if ls["mean_lift"] is None else f"{ls['mean_lift']:+.2f}"
        lines += ["", f"Lift > 0 with non-overlapping intervals on {ls['positive_disjoint']} of {ls['tasks']} "
                  f"instructions ({ls['positive_significant']} with the difference interval above 0, "
                  f"{ls.get('positive_holm', 0)} after Holm's correction for {ls['tasks']} tests); mean lift {mean}."]
    if summary.get("matrix_cells"):
        mc = summary["matrix_cells"]
        conds = mc["conditions"]
        lines += ["", "## Instruction matrix", "", "Success of the row's goal when the column's instruction was given.", "",
                  "| goal \\ instructed | " + " | ".join("(none)" if c.startswith("_") else c for c in conds) + " |",
                  "| --- |" + " --- |" * len(conds)]
        for g, row in mc["cells"].items():
            lines.append(f"| {g} | " + " | ".join(
                "-" if not row[c]["n"] else (f"**{row[c]['rate']:.2f}**" if c == g else f"{row[c]['rate']:.2f}") for c in conds) + " |")
    lines += ["", "## Phrasings", "", "| task | phrasing | lang | success |", "| --- | --- | --- | --- |"]
    for tid, e in summary["tasks"].items():
        for text, v in e["variants"].items():
            lines.append(f"| {tid} | {text} | {v.get('lang', '')} | {_fmt_rate(v)} |")
        if e["spread"]["range"] is not None and len(e["variants"]) > 1:
            lines.append(f"| {tid} | *spread (max - min)* | | {e['spread']['range']:.2f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- SVG pieces


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def svg_bars(tasks: list[str], runs: list[EvalRun], key: str = "instructed") -> str:
    """Grouped horizontal bars (one group per task, one bar per run) with Wilson interval whiskers."""
    bar_h, gap, label_w, plot_w = 14, 10, 190, 460
    group_h = bar_h * len(runs) + gap
    height = 30 + group_h * len(tasks) + 10
    width = label_w + plot_w + 70
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="bars" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="success rates">']
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        x = label_w + t * plot_w
        out.append(f'<line x1="{x:.1f}" y1="20" x2="{x:.1f}" y2="{height - 8}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="14" font-size="10" text-anchor="middle" fill="#555">{t:g}</text>')
    for i, tid in enumerate(tasks):
        y0 = 24 + i * group_h
        out.append(f'<text x="{label_w - 6}" y="{y0 + group_h / 2:.1f}" font-size="11" text-anchor="end" '
                   f'dominant-baseline="middle">{_esc(tid)}</text>')
        for j, run in enumerate(runs):
            e = (run.summary["tasks"].get(tid) or {}).get(key)
            y = y0 + j * bar_h
            color = PALETTE[j % len(PALETTE)]
            if not e or not e["n"]:
                out.append(f'<text x="{label_w + 4}" y="{y + bar_h - 3}" font-size="10" fill="#999">n/a</text>')
                continue
            w = e["rate"] * plot_w
            out.append(f'<rect x="{label_w}" y="{y + 1}" width="{w:.1f}" height="{bar_h - 2}" fill="{color}">'
                       f'<title>{_esc(run.name)}: {_esc(_fmt_rate(e))}</title></rect>')
            lo, hi = label_w + e["low"] * plot_w, label_w + e["high"] * plot_w
            cy = y + bar_h / 2
            out.append(f'<line x1="{lo:.1f}" y1="{cy:.1f}" x2="{hi:.1f}" y2="{cy:.1f}" stroke="#222" stroke-width="1.2"/>')
            for xx in (lo, hi):
                out.append(f'<line x1="{xx:.1f}" y1="{cy - 4:.1f}" x2="{xx:.1f}" y2="{cy + 4:.1f}" stroke="#222" stroke-width="1.2"/>')
            out.append(f'<text x="{label_w + plot_w + 6}" y="{y + bar_h - 3}" font-size="10" fill="#333">'
                       f'{e["successes"]}/{e["n"]}</text>')
    out.append("</svg>")
    return "".join(out)


def _short(x: float) -> str:
    """4200000 -> 4.2M, 12500 -> 12.5k, 0.25 -> 0.25 (axis labels)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:g}"


def svg_curves(name: str, series: list[tuple[str, str, list[tuple[float, float]]]], x_label: str = "step") -> str:
    """A line chart of one metric for several runs: series = [(run name, colour, points)]."""
    w, h, pad_l, pad_b = 420, 200, 56, 28
    pts_all = [p for _, _, pts in series for p in pts]
    if not pts_all:
        return ""
    xs, ys = [p[0] for p in pts_all], [p[1] for p in pts_all]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def sx(x):
        return pad_l + (x - x0) / (x1 - x0) * (w - pad_l - 10)

    def sy(y):
        return 10 + (1 - (y - y0) / (y1 - y0)) * (h - pad_b - 10)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="curve" width="{w}" height="{h}" viewBox="0 0 {w} {h}">',
           f'<rect x="{pad_l}" y="10" width="{w - pad_l - 10}" height="{h - pad_b - 10}" fill="#fafafa" stroke="#ccc"/>',
           f'<text x="{pad_l}" y="{h - 4}" font-size="10" fill="#555">{_short(x0)}</text>',
           f'<text x="{w - 10}" y="{h - 4}" font-size="10" text-anchor="end" fill="#555">{_short(x1)} ({_esc(x_label)})</text>',
           f'<text x="{pad_l - 4}" y="16" font-size="10" text-anchor="end" fill="#555">{y1:.3g}</text>',
           f'<text x="{pad_l - 4}" y="{h - pad_b}" font-size="10" text-anchor="end" fill="#555">{y0:.3g}</text>',
           f'<text x="{(w + pad_l) / 2:.0f}" y="{h - 4}" font-size="11" text-anchor="middle">{_esc(name)}</text>']
    for run_name, color, pts in series:
        if not pts:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}">'
                   f'<title>{_esc(run_name)}</title></polyline>')
        if len(pts) <= 40:  # sparse series (evaluations, short runs): a dot per value, a lone value stays visible
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"><title>{_esc(run_name)}: '
                    f'{_short(x)} {_esc(x_label)}, {y:.4g}</title></circle>' for x, y in pts]
    out.append("</svg>")
    return "".join(out)


def _thumbnail(video: Path, width: int = 160) -> str | None:
    """A PNG data URI of a frame from the middle of ``video`` (None if it cannot be read)."""
    try:
        import av
        from PIL import Image

        with av.open(str(video)) as c:
            frames = [f.to_image() for f in c.decode(video=0)]
        if not frames:
            return None
        img: Image.Image = frames[len(frames) // 2]
        img = img.resize((width, max(1, int(img.height * width / img.width))))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return png_data_uri(buf.getvalue())
    except Exception:  # noqa: BLE001 - a broken video only loses its thumbnail
        return None


# ---------------------------------------------------------------------------- compare


_CSS = """
body{font-family:-apple-system,'Segoe UI','Noto Sans',Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}
th{background:#f3f3f3}.sig{font-weight:bold;color:#1a7f37}.signeg{font-weight:bold;color:#c0392b}.muted{color:#888}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
.videos{display:flex;flex-wrap:wrap;gap:10px}.videos figure{margin:0;font-size:11px;width:170px}
.videos img{width:160px;border:1px solid #ccc}.curves{display:flex;flex-wrap:wrap;gap:12px}
"""


def _delta_cell(d) -> str:
    if d is None or math.isnan(d.diff):
        return '<td class="muted">-</td>'
    cls = ("sig" if d.diff > 0 else "signeg") if d.significant else ""
    return f'<td class="{cls}">{d.diff:+.2f} [{d.low:+.2f}, {d.high:+.2f}] p={d.p_value:.3f}{" *" if d.significant else ""}</td>'


def _task_union(runs: list[EvalRun]) -> list[str]:
    """Every task of every run, in first-seen order."""
    return list(dict.fromkeys(t for r in runs for t in r.summary["tasks"]))


def compare_html(runs: list[EvalRun], videos_per_run: int = 8) -> str:
    """The comparison page for ``runs`` (the first is the baseline for deltas)."""
    tasks = _task_union(runs)
    base = runs[0]
    parts = [f"<h1>aimc compare: {_esc(' vs '.join(r.name for r in runs))}</h1>"]
    parts.append('<div class="legend">' + "".join(
        f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{_esc(r.name)}</span>' for i, r in enumerate(runs)) + "</div>")
    parts.append("<table><tr><th>run</th><th>suite</th><th>episodes</th><th>env errors</th><th>weights</th>"
                 "<th>cond_scale</th><th>folder</th></tr>")
    for r in runs:
        a = r.meta.get("agent") or {}
        parts.append(f"<tr><td>{_esc(r.name)}</td><td>{_esc(r.summary['suite'])}</td><td>{r.summary['episodes']}</td>"
                     f"<td>{r.summary['errors']}</td><td>{_esc(a.get('weights', '-'))}</td><td>{_esc(a.get('cond_scale', '-'))}</td>"
                     f"<td>{_esc(r.path)}</td></tr>")
    parts.append("</table>")
    suites = {r.summary["suite"] for r in runs}
    if len(suites) > 1:
        parts.append(f"<p class=\"signeg\">Warning: the runs come from different suites ({_esc(', '.join(sorted(suites)))}); "
                     "only tasks with the same id are compared.</p>")

    parts.append("<h2 id=\"success\">Success per task (instructed)</h2><p>Bars: success rate; whiskers: 95 % Wilson "
                 "interval; right: successes/episodes.</p>")
    parts.append(svg_bars(tasks, runs, "instructed"))

    head = "".join(f"<th>{_esc(r.name)}</th>" for r in runs) + "".join(f"<th>{_esc(r.name)} - {_esc(base.name)}</th>" for r in runs[1:])
    parts.append(f"<h2 id=\"deltas\">Deltas against {_esc(base.name)}</h2><p>Differences with Newcombe 95 % intervals and "
                 "two-proportion z-test p-values; <b>*</b> = interval excludes 0.</p>")
    parts.append(f"<table><tr><th>task</th><th>rule</th>{head}<th>median steps to success</th></tr>")
    for tid in tasks:
        entries = [r.summary["tasks"].get(tid) for r in runs]
        rule = next((e["rule"] for e in entries if e), "")
        cells = "".join(f"<td>{_esc(_fmt_rate(e['instructed'] if e else None))}</td>" for e in entries)
        b = _rate_of(entries[0]["instructed"]) if entries[0] else None
        for e in entries[1:]:
            o = _rate_of(e["instructed"]) if e else None
            cells += _delta_cell(difference(o, b) if (o and b) else None)
        steps = " / ".join("-" if not e or e["steps_to_success"]["median"] is None else f"{e['steps_to_success']['median']:g}"
                           for e in entries)
        parts.append(f"<tr><td>{_esc(tid)}</td><td>{_esc(rule)}</td>{cells}<td>{steps}</td></tr>")
    parts.append("</table>")

    if any(e.get("lift") for r in runs for e in r.summary["tasks"].values()):
        parts.append("<h2 id=\"lift\">Instruction following: lift over the unconditioned policy</h2>"
                     "<p>lift(g) = success(g | instructed g) - success(g | no instruction), same worlds. "
                     "Bars: success <b>without</b> instruction.</p>")
        parts.append(svg_bars(tasks, runs, "unconditioned").replace('aria-label="success rates"', 'aria-label="unconditioned"'))
        parts.append("<table><tr><th>task</th>" + "".join(f"<th>{_esc(r.name)} lift</th>" for r in runs) + "</tr>")
        for tid in tasks:
            row = f"<tr><td>{_esc(tid)}</td>"
            for r in runs:
                e = r.summary["tasks"].get(tid) or {}
                lift = e.get("lift")
                if lift and lift["diff"] is not None and not math.isnan(lift["diff"]):
                    from aimc.eval.metrics import Delta

                    d = Delta(lift["diff"], lift["low"], lift["high"], lift["p_value"])
                    holm = f", Holm p={lift['p_holm']:.3f}" if lift.get("p_holm") is not None else ""
                    row += _delta_cell(d)[:-5] + holm + (" (disjoint)" if e.get("lift_disjoint") else "") + "</td>"
                else:
                    row += '<td class="muted">-</td>'
            parts.append(row + "</tr>")
        parts.append("</table>")
        for r in runs:
            ls = r.summary.get("lift_summary")
            if ls:
                mean = "-" if ls["mean_lift"] is None else f"{ls['mean_lift']:+.2f}"
                parts.append(f"<p><b>{_esc(r.name)}</b>: lift &gt; 0 with non-overlapping intervals on "
                             f"{ls['positive_disjoint']} of {ls['tasks']} instructions; mean lift {mean}.</p>")

    for r in runs:
        mc = r.summary.get("matrix_cells")
        if not mc:
            continue
        conds = mc["conditions"]
        parts.append(f"<h2>Instruction matrix: {_esc(r.name)}</h2><p>Row: goal scored; column: instruction given.</p><table><tr><th>goal \\ instructed</th>"
                     + "".join(f"<th>{'(none)' if c.startswith('_') else _esc(c)}</th>" for c in conds) + "</tr>")
        for g, row in mc["cells"].items():
            tds = ""
            for c in conds:
                cell = row[c]
                if not cell["n"]:
                    tds += '<td class="muted">-</td>'
                    continue
                shade = int(255 - 150 * cell["rate"])
                style = f"background:rgb({shade},{255 - int(60 * cell['rate'])},{shade})"
                bold = "font-weight:bold;" if c == g else ""
                tds += f'<td style="{bold}{style}" title="{_esc(_fmt_rate(cell))}">{cell["rate"]:.2f}</td>'
            parts.append(f"<tr><td>{_esc(g)}</td>{tds}</tr>")
        parts.append("</table>")

    parts.append("<h2 id=\"phrasings\">Phrasings (per-variant spread)</h2><table><tr><th>task</th><th>phrasing</th><th>lang</th>"
                 + "".join(f"<th>{_esc(r.name)}</th>" for r in runs) + "</tr>")
    for tid in tasks:
        texts: list[str] = []
        for r in runs:
            for t in (r.summary["tasks"].get(tid) or {}).get("variants", {}):
                if t not in texts:
                    texts.append(t)
        for t in texts:
            lang = next(((r.summary["tasks"].get(tid) or {}).get("variants", {}).get(t, {}).get("lang", "") for r in runs), "")
            parts.append(f"<tr><td>{_esc(tid)}</td><td>{_esc(t)}</td><td>{_esc(lang)}</td>" + "".join(
                f"<td>{_esc(_fmt_rate((r.summary['tasks'].get(tid) or {}).get('variants', {}).get(t)))}</td>" for r in runs) + "</tr>")
    parts.append("</table>")

    metric_names: list[str] = []
    for r in runs:
        for k in r.curves:
            if k not in metric_names:
                metric_names.append(k)
    metric_names.sort(key=lambda k: (0 if "loss" in k else 1, k))
    parts.append("<h2 id=\"training\">Training curves</h2>")
    if metric_names:
        parts.append('<div class="curves">')
        for k in metric_names[:6]:
            parts.append(svg_curves(k, [(r.name, PALETTE[i % len(PALETTE)], r.curves.get(k, [])) for i, r in enumerate(runs)]))
        parts.append("</div><p class=\"muted\">From " + ", ".join(
            f"{_esc(r.train_dir / 'metrics.jsonl')}" for r in runs if r.train_dir) + "</p>")
    else:
        parts.append("<p class=\"muted\">No metrics.jsonl found above the runs' weights.</p>")

    parts.append("<h2 id=\"videos\">Videos</h2>")
    any_video = False
    for r in runs:
        vids = [row for row in r.rows if row.get("video")][:videos_per_run]
        if not vids:
            continue
        any_video = True
        parts.append(f"<h3>{_esc(r.name)}</h3><div class=\"videos\">")
        for row in vids:
            vpath = (r.path / row["video"]).resolve()
            thumb = _thumbnail(vpath)
            goal = row["condition"].split("@")[0]
            ok = (any(v is not None for v in row["success"].values()) if goal.startswith("_")
                  else row["success"].get(goal) is not None)
            label = f"{row['instruction'] or '(no instruction)'} - seed {row['seed']} - {'success' if ok else 'no success'}"
            img = f'<img src="{thumb}" alt="{_esc(label)}">' if thumb else "[video]"
            parts.append(f'<figure><a href="{_esc(vpath.as_uri())}">{img}</a><figcaption>{_esc(label)}</figcaption></figure>')
        parts.append("</div>")
    if not any_video:
        parts.append("<p class=\"muted\">No videos recorded (use aimc eval --videos N).</p>")
    return html_page(f"aimc compare: {' vs '.join(r.name for r in runs)}", parts)


def html_page(title: str, parts: list[str]) -> str:
    """A self-contained page (inline CSS) around ``parts``; shared by every aimc HTML report."""
    head = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>"
            f"<style>{_CSS}</style></head><body>")
    return "\n".join([head, *parts, "</body></html>"])


def png_data_uri(png: bytes) -> str:
    """PNG bytes -> a data URI for an inline ``<img>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def compare_markdown(runs: list[EvalRun]) -> str:
    tasks = _task_union(runs)
    base = runs[0]
    lines = [f"# aimc compare: {' vs '.join(r.name for r in runs)}", "",
             "Success rates with 95 % Wilson intervals; deltas against the first run with Newcombe intervals "
             "(* = interval excludes 0).", "",
             "| task | " + " | ".join(r.name for r in runs) + " | " + " | ".join(f"{r.name} - {base.name}" for r in runs[1:]) + " |",
             "| --- |" + " --- |" * (2 * len(runs) - 1)]
    for tid in tasks:
        entries = [r.summary["tasks"].get(tid) for r in runs]
        b = _rate_of(entries[0]["instructed"]) if entries[0] else None
        deltas = []
        for e in entries[1:]:
            o = _rate_of(e["instructed"]) if e else None
            deltas.append(_fmt_delta(difference(o, b)) if (o and b) else "-")
        lines.append(f"| {tid} | " + " | ".join(_fmt_rate(e["instructed"] if e else None) for e in entries) + " | "
                     + " | ".join(deltas) + " |")
    for r in runs:
        ls = r.summary.get("lift_summary")
        if ls:
            mean = "-" if ls["mean_lift"] is None else f"{ls['mean_lift']:+.2f}"
            lines += ["", f"{r.name}: lift > 0 with non-overlapping intervals on {ls['positive_disjoint']} of "
                      f"{ls['tasks']} instructions; mean lift {mean}."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- what compare reads

ACCEPTS = ("aimc compare reads evaluation folders (written by `aimc eval --out`: summary.json, meta.json, "
           "results.jsonl), training run folders (written by `aimc train`: config.yaml, metrics.jsonl, "
           "summary.json) or continual runs (written by `aimc continual`: forgetting.json), all of one kind")


def _read_json_file(path: Path, fix: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not readable JSON ({e}); {fix}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror}); {fix}") from None


def run_kind(path: str | Path) -> str:
    """``"eval"`` for a folder written by ``aimc eval``, ``"train"`` for one written by ``aimc
    train``, ``"continual"`` for one written by ``aimc continual``; a :class:`UserError` naming the
    path and what compare accepts for anything else."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such folder; {ACCEPTS}")
    if not path.is_dir():
        raise UserError(f"{path}: is a file, not a folder; {ACCEPTS}")
    if (path / "forgetting.json").is_file():
        return "continual"
    is_train = (path / "config.yaml").is_file() and ((path / "metrics.jsonl").is_file() or (path / "summary.json").is_file())
    sfile = path / "summary.json"
    if sfile.is_file():
        fix = ("run `aimc train --resume` on it or compare its evaluations instead" if is_train
               else "run `aimc eval` again with the same --out to rewrite it")
        summary = _read_json_file(sfile, fix)
        if isinstance(summary, dict) and "tasks" in summary:
            return "eval"
        if is_train and isinstance(summary, dict) and "frames" in summary:
            return "train"
        raise UserError(f"{sfile}: neither an evaluation summary nor a training run's summary; {ACCEPTS}")
    if is_train:
        return "train"  # still training (or killed): compared as far as it got
    if (path / "results.jsonl").is_file() or (path / "meta.json").is_file():
        raise UserError(
            f"{path}: no summary.json here; pass the folder that `aimc eval --out` wrote "
            "(run `aimc eval` again with the same --out to finish or re-summarise it)"
        )
    what = "an empty folder" if not any(path.iterdir()) else "neither an evaluation folder nor a training run"
    raise UserError(f"{path}: {what}; {ACCEPTS}")


# ---------------------------------------------------------------------------- training runs


@dataclass
class TrainRun:
    """One training run folder (``aimc train``), loaded for reporting."""

    name: str
    path: Path
    config: dict
    summary: dict | None  # None while the run has not ended
    curves: dict[str, list[tuple[float, float]]]  # x = x_key
    last: dict[str, float]  # the last value of every logged scalar
    git: str = ""
    x_key: str = "frames"  # policy runs log frames; prior and embedder runs only steps

    @property
    def trains(self) -> str:
        """What the run trained, from its config's sections."""
        return training_of(self.config)


def training_of(config: dict) -> str:
    """``policy`` (aimc train), ``prior`` (aimc prior train), ``embedder`` (aimc mineclip train)."""
    if {"data", "model", "optim", "schedule"} <= set(config):
        return "policy"
    if "prior" in config and "epochs" in config:
        return "prior"
    if "embed_dim" in config and "store" in config:
        return "embedder"
    return "unknown"


def load_train_run(path: str | Path, name: str | None = None) -> TrainRun:
    """Read a training run folder: its resolved config, summary, curves and git revision."""
    import yaml

    path = Path(path)
    cfile = path / "config.yaml"
    try:
        config = yaml.safe_load(cfile.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{cfile}: not readable YAML ({str(e).splitlines()[0]}); it is the run's resolved config, "
                        "written by aimc train: compare runs whose folders are intact") from None
    except OSError as e:
        raise UserError(f"{cfile}: cannot be read ({e.strerror})") from None
    if not isinstance(config, dict):
        raise UserError(f"{cfile}: not a training config (a mapping of sections such as data, model, optim)")
    summary = None
    if (path / "summary.json").is_file():
        summary = _read_json_file(path / "summary.json", "it is written when the run ends")
    x_key = "frames" if training_of(config) == "policy" else "step"
    curves = read_curves(path / "metrics.jsonl", x_key=x_key)
    curves.pop("seconds", None)
    last = {k: pts[-1][1] for k, pts in curves.items()}
    if summary is not None:
        last.update({k: v for k, v in (summary.get("last") or {}).items() if isinstance(v, (int, float))})
    git = ""
    readme = path / "README.md"
    if readme.is_file():
        for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("- git: `"):
                git = line[len("- git: `"):].rstrip("`")  # the last session's revision
    return TrainRun(name or path.name, path, config, summary, curves, last, git, x_key)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


_ABSENT = object()


def config_diff(configs: list[dict]) -> list[tuple[str, list[Any]]]:
    """The dotted keys whose values differ between the resolved configs, with each config's value
    (:data:`_ABSENT` where a config lacks the key, e.g. one written by an older aimc)."""
    flat = [_flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    out = []
    for k in keys:
        values = [f.get(k, _ABSENT) for f in flat]
        if any(v != values[0] for v in values[1:]):
            out.append((k, values))
    return out


def _fmt_value(v: Any) -> str:
    if v is _ABSENT:
        return "(not set)"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    return "''" if v == "" else str(v)


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


# metrics shown in the "final numbers" table and as curves, in this order (then eval/mean/*)
_HEADLINE = ("train/loss", "val/loss", "train/frames_per_s", "train/grad_norm", "train/lr", "sys/gpu_mem_gib")
_CURVES = ("train/loss", "val/loss", "eval/mean/instructed", "eval/mean/unconditioned", "eval/mean/lift", "train/lr",
           "train/grad_norm", "train/weight_norm", "train/frames_per_s", "train/uncond_fraction", "sys/gpu_mem_gib")


def _run_rows(run: TrainRun) -> dict[str, str]:
    """One run's overview, as display strings."""
    s = run.summary
    last_x = max((p[-1][0] for p in run.curves.values()), default=None)
    if run.trains != "policy":  # prior and embedder runs write no summary.json
        status, steps, frames = f"{run.trains} run", last_x, None
    elif s is None:
        status, steps, frames = "unfinished (no summary.json yet)", None, last_x
    else:
        status = f"stopped: {s['stopped']}" if s.get("stopped") else "finished"
        steps, frames = s.get("step"), s.get("frames")
    train_s = s["hours"] * 3600 if s and isinstance(s.get("hours"), (int, float)) else run.last.get("time/train_s")
    eval_s = (s.get("periodic_seconds") or {}).get("eval") if s else run.last.get("time/eval_total_s")
    val = run.curves.get("val/loss") or run.curves.get("val_loss") or []
    best = s.get("best_val_loss") if s else min((v for _, v in val), default=None)
    return {
        "status": status,
        "steps": "-" if steps is None else f"{int(steps):,}",
        "frames": "-" if frames is None else f"{int(frames):,}",
        "training time": _fmt_seconds(train_s),
        "evaluation time": _fmt_seconds(eval_s) if eval_s is not None else "-",
        "best val loss": "-" if best is None else f"{best:.4f}",
        "git": run.git or "-",
    }


def _final_metrics(runs: list[TrainRun]) -> list[tuple[str, list[str]]]:
    names = [k for k in _HEADLINE if any(k in r.last for r in runs)]
    names += sorted({k for r in runs for k in r.last if k.startswith("eval/mean/")})
    if not names:  # prior and embedder runs
        names = sorted({k for r in runs for k in r.last}, key=lambda k: (0 if "loss" in k else 1, k))
    return [(k, ["-" if k not in r.last else f"{r.last[k]:.4g}" for r in runs]) for k in names]


def compare_train_html(runs: list[TrainRun]) -> str:
    """The comparison page for training runs (curves, final numbers, differing settings)."""
    title = f"aimc compare: {' vs '.join(r.name for r in runs)} (training runs)"
    parts = [f"<h1>{_esc(title)}</h1>"]
    parts.append('<div class="legend">' + "".join(
        f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{_esc(r.name)}</span>' for i, r in enumerate(runs)) + "</div>")
    rows = [_run_rows(r) for r in runs]
    parts.append("<h2 id=\"runs\">Runs</h2><table><tr><th>run</th>" + "".join(f"<th>{_esc(k)}</th>" for k in rows[0])
                 + "<th>folder</th></tr>")
    for r, row in zip(runs, rows):
        parts.append(f"<tr><td>{_esc(r.name)}</td>" + "".join(f"<td>{_esc(v)}</td>" for v in row.values())
                     + f"<td>{_esc(r.path)}</td></tr>")
    parts.append("</table><p class=\"muted\">Training time leaves out the evaluation during training "
                 "(eval.every_frames), which is listed apart.</p>")

    x_label = runs[0].x_key
    parts.append(f"<h2 id=\"curves\">Training curves</h2><p>x axis: {_esc(x_label)}"
                 + (" trained on (comparable across batch sizes and GPU counts). Per-task evaluation curves are in each "
                    "run's TensorBoard (<code>tb/</code>)." if x_label == "frames" else ".") + "</p>")
    names = [k for k in _CURVES if any(r.curves.get(k) for r in runs)]
    if not names:  # prior and embedder runs log their own names: show them all, losses first
        names = sorted({k for r in runs for k in r.curves}, key=lambda k: (0 if "loss" in k else 1, k))[:12]
    if names:
        parts.append('<div class="curves">')
        for k in names:
            parts.append(svg_curves(k, [(r.name, PALETTE[i % len(PALETTE)], r.curves.get(k, [])) for i, r in enumerate(runs)],
                                    x_label=x_label))
        parts.append("</div>")
    else:
        parts.append('<p class="muted">No metrics logged yet (metrics.jsonl is empty).</p>')

    final = _final_metrics(runs)
    parts.append("<h2 id=\"final\">Final numbers</h2><p>The last logged value of each metric.</p><table><tr><th>metric</th>"
                 + "".join(f"<th>{_esc(r.name)}</th>" for r in runs) + "</tr>")
    for k, values in final:
        parts.append(f"<tr><td>{_esc(k)}</td>" + "".join(f"<td>{_esc(v)}</td>" for v in values) + "</tr>")
    parts.append("</table>")

    diff = config_diff([r.config for r in runs])
    parts.append("<h2 id=\"settings\">Settings that differ</h2>")
    if diff:
        parts.append("<p>Every key of the resolved configs (config.yaml) whose value is not the same in all runs.</p>"
                     "<table><tr><th>setting</th>" + "".join(f"<th>{_esc(r.name)}</th>" for r in runs) + "</tr>")
        for k, values in diff:
            parts.append(f"<tr><td><code>{_esc(k)}</code></td>" + "".join(f"<td>{_esc(_fmt_value(v))}</td>" for v in values)
                         + "</tr>")
        parts.append("</table>")
    else:
        parts.append("<p>None: the resolved configs are identical.</p>")
    return html_page(title, parts)


def compare_train_markdown(runs: list[TrainRun]) -> str:
    names = [r.name for r in runs]
    lines = [f"# aimc compare: {' vs '.join(names)} (training runs)", "",
             "Curves (loss, validation, evaluation during training) are in report.html.", "",
             "## Runs", ""]
    rows = [_run_rows(r) for r in runs]
    lines += ["| run | " + " | ".join(rows[0]) + " | folder |", "| --- |" + " --- |" * (len(rows[0]) + 1)]
    for r, row in zip(runs, rows):
        lines.append(f"| {r.name} | " + " | ".join(row.values()) + f" | {r.path} |")
    lines += ["", "Training time leaves out the evaluation during training, listed apart.", "",
              "## Final numbers", "", "| metric | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(runs)]
    lines += [f"| {k} | " + " | ".join(v) + " |" for k, v in _final_metrics(runs)]
    diff = config_diff([r.config for r in runs])
    lines += ["", "## Settings that differ", ""]
    if diff:
        lines += ["| setting | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(runs)]
        lines += [f"| `{k}` | " + " | ".join(_fmt_value(v).replace("|", "\\|") for v in values) + " |" for k, values in diff]
    else:
        lines.append("None: the resolved configs are identical.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- continual runs


@dataclass
class ContinualRun:
    """One ``aimc continual`` run folder, loaded for reporting (its ``forgetting.json``)."""

    name: str
    path: Path
    matrix: dict


def load_continual_run(path: str | Path, name: str | None = None) -> ContinualRun:
    path = Path(path)
    matrix = _read_json_file(path / "forgetting.json", "it is rewritten by running the same aimc continual command again")
    if not isinstance(matrix, dict) or not {"tasks", "columns", "cells"} <= set(matrix):
        raise UserError(f"{path / 'forgetting.json'}: not a forgetting matrix (tasks, columns, cells); it is written by "
                        "aimc continual: run the same command again to rewrite it")
    return ContinualRun(name or matrix.get("name") or path.name, path, matrix)


def _cell_text(c: dict | None) -> str:
    return "…" if c is None else (f"{c['rate']:.2f} [{c['low']:.2f}, {c['high']:.2f}] ({c['successes']}/{c['n']})"
                                  if c.get("n") else "-")


def _column_title(col: dict) -> str:
    return f"{col['stage']} {col['name']}"


def forgetting_markdown(matrix: dict, level: int = 1) -> str:
    """The forgetting matrix as markdown: rows = tasks, columns = after stage j (0 = init), each
    cell success [95 % Wilson interval] (successes/n), the cell of the stage that teaches a task
    in bold; then each task's gain and forgetting with the difference's interval."""
    h = "#" * level
    cols = matrix["columns"]
    lines = [f"{h} Forgetting matrix{': ' + matrix['name'] if matrix.get('name') else ''}", "",
             f"Instructed success of each task (row) after each stage (column; 0 = the init weights), "
             f"{matrix.get('episodes', '?')} episodes per task on the evaluation worlds of `{matrix.get('suite', '?')}`, "
             "95 % Wilson intervals; **bold** = after the stage that teaches the task. "
             f"Replay per stage: {', '.join(f'{x:g}' for x in matrix.get('replay', []))}; "
             f"L2-SP per stage: {', '.join(f'{x:g}' for x in matrix.get('l2sp', []))}.", "",
             "| task | " + " | ".join(f"after {_column_title(c)}" for c in cols) + " | gain of its stage | forgetting (best earlier - final) |",
             "| --- |" + " --- |" * (len(cols) + 2)]
    for t in matrix["tasks"]:
        taught = matrix.get("taught_by", {}).get(t)
        cells = []
        for j, c in enumerate(matrix["cells"][t]):
            text = _cell_text(c)
            cells.append(f"**{text}**" if j == taught and c is not None else text)
        lines.append(f"| {t} | " + " | ".join(cells) + f" | {_delta_text(matrix.get('gain', {}).get(t))} | "
                     f"{_forget_text(matrix.get('forgetting', {}).get(t))} |")
    lines += ["", "Forgetting > 0: the task was done better after an earlier stage than at the end; an interval "
              "that excludes 0 (*) is more than the noise of this many episodes."]
    return "\n".join(lines) + "\n"


def _delta_text(d: dict | None) -> str:
    if not d or d.get("diff") is None or (isinstance(d["diff"], float) and math.isnan(d["diff"])):
        return "-"
    star = " *" if d["low"] > 0 or d["high"] < 0 else ""
    return f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]{star}"


def _forget_text(d: dict | None) -> str:
    if not d:
        return "-"
    return f"{_delta_text(d)} (stage {d['best_stage']} -> {d['final_stage']})"


def _heat_colour(rate: float) -> str:
    """0 -> pale red, 0.5 -> pale yellow, 1 -> green (readable black text on all)."""
    stops = ((0.0, (244, 199, 195)), (0.5, (252, 232, 178)), (1.0, (124, 196, 139)))
    for (x0, c0), (x1, c1) in zip(stops, stops[1:]):
        if rate <= x1:
            f = (rate - x0) / (x1 - x0) if x1 > x0 else 0.0
            return "#" + "".join(f"{round(a + (b - a) * max(0.0, min(1.0, f))):02x}" for a, b in zip(c0, c1))
    return "#%02x%02x%02x" % stops[-1][1]


def svg_heatmap(matrix: dict, title: str = "") -> str:
    """The forgetting matrix as an SVG heatmap: one cell per (task, after stage), coloured by the
    success rate, labelled with it and its interval; the cell of the stage teaching a task framed."""
    cols, tasks = matrix["columns"], matrix["tasks"]
    label_w, cw, ch, top = 130, 96, 34, 46
    width, height = label_w + cw * len(cols) + 10, top + ch * len(tasks) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="forgetting matrix {_esc(title)}">']
    if title:
        out.append(f'<text x="4" y="14" font-size="12" font-weight="bold">{_esc(title)}</text>')
    for j, c in enumerate(cols):
        x = label_w + j * cw + cw / 2
        out.append(f'<text x="{x:.1f}" y="{top - 8}" font-size="10" text-anchor="middle">after {_esc(_column_title(c))}</text>')
    for i, t in enumerate(tasks):
        y = top + i * ch
        out.append(f'<text x="{label_w - 6}" y="{y + ch / 2:.1f}" font-size="11" text-anchor="end" '
                   f'dominant-baseline="middle">{_esc(t)}</text>')
        taught = matrix.get("taught_by", {}).get(t)
        for j, c in enumerate(matrix["cells"][t]):
            x = label_w + j * cw
            if c is None or not c.get("n"):
                out.append(f'<rect class="cell" data-task="{_esc(t)}" data-stage="{j}" x="{x}" y="{y}" width="{cw - 2}" '
                           f'height="{ch - 2}" fill="#eee"/><text x="{x + cw / 2:.1f}" y="{y + ch / 2 + 3:.1f}" '
                           'font-size="10" text-anchor="middle" fill="#999">not yet</text>')
                continue
            stroke = ' stroke="#222" stroke-width="2"' if j == taught else ""
            out.append(f'<rect class="cell" data-task="{_esc(t)}" data-stage="{j}" data-rate="{c["rate"]:.4f}" x="{x}" '
                       f'y="{y}" width="{cw - 2}" height="{ch - 2}" fill="{_heat_colour(c["rate"])}"{stroke}>'
                       f'<title>{_esc(t)} after {_esc(_column_title(cols[j]))}: {_esc(_cell_text(c))}</title></rect>')
            out.append(f'<text x="{x + cw / 2:.1f}" y="{y + 14}" font-size="12" text-anchor="middle">{c["rate"]:.2f}</text>')
            out.append(f'<text x="{x + cw / 2:.1f}" y="{y + 26}" font-size="9" text-anchor="middle" fill="#444">'
                       f'[{c["low"]:.2f}, {c["high"]:.2f}]</text>')
    out.append("</svg>")
    return "".join(out)


def compare_continual_html(runs: list[ContinualRun]) -> str:
    """The comparison page for continual runs: their forgetting matrices as heatmaps side by side,
    each task's forgetting per run, and the plans' per-stage replay and L2-SP."""
    title = f"aimc compare: {' vs '.join(r.name for r in runs)} (continual runs)"
    parts = [f"<h1>{_esc(title)}</h1>",
             "<p>Instructed success of each task (row) after each stage (column; 0 = the weights the plan started "
             "from), with 95 % Wilson intervals; a framed cell is the stage that teaches the task.</p>",
             '<h2 id="matrices">Forgetting matrices</h2><div class="curves">']
    for r in runs:
        parts.append(f'<figure class="matrix" data-run="{_esc(r.name)}" style="margin:0">' + svg_heatmap(r.matrix, r.name)
                     + f'<figcaption class="muted" style="font-size:11px">{_esc(r.path)}</figcaption></figure>')
    parts.append("</div>")
    tasks = list(dict.fromkeys(t for r in runs for t in r.matrix["tasks"]))
    parts.append('<h2 id="forgetting">Forgetting per task</h2><p>Best earlier success - final success, with '
                 "Newcombe's interval of the difference (bold: the interval excludes 0).</p><table><tr><th>task</th>"
                 + "".join(f"<th>{_esc(r.name)}: final</th><th>{_esc(r.name)}: forgetting</th>" for r in runs) + "</tr>")
    for t in tasks:
        row = [f"<td>{_esc(t)}</td>"]
        for r in runs:
            cells = r.matrix["cells"].get(t) or []
            done = [c for c in cells if c is not None]
            row.append(f"<td>{_esc(_cell_text(done[-1]) if done else '-')}</td>")
            f = r.matrix.get("forgetting", {}).get(t)
            cls = ' class="signeg"' if f and (f["low"] > 0 or f["high"] < 0) else ""
            row.append(f"<td{cls}>{_esc(_forget_text(f))}</td>")
        parts.append("<tr>" + "".join(row) + "</tr>")
    parts.append("</table>")
    parts.append('<h2 id="plans">Plans</h2><table><tr><th>run</th><th>stages</th><th>replay per stage</th>'
                 "<th>L2-SP per stage</th><th>episodes per task</th><th>folder</th></tr>")
    for r in runs:
        m = r.matrix
        parts.append(f"<tr><td>{_esc(r.name)}</td><td>{_esc(', '.join(_column_title(c) for c in m['columns'][1:]))}</td>"
                     f"<td>{_esc(', '.join(f'{x:g}' for x in m.get('replay', [])))}</td>"
                     f"<td>{_esc(', '.join(f'{x:g}' for x in m.get('l2sp', [])))}</td><td>{_esc(m.get('episodes', '-'))}</td>"
                     f"<td>{_esc(r.path)}</td></tr>")
    parts.append("</table>")
    return html_page(title, parts)


def compare_continual_markdown(runs: list[ContinualRun]) -> str:
    lines = [f"# aimc compare: {' vs '.join(r.name for r in runs)} (continual runs)", "",
             "Heatmaps of the matrices are in report.html.", ""]
    for r in runs:
        lines += [forgetting_markdown({**r.matrix, "name": r.name}, level=2).rstrip(), "", f"Folder: {r.path}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- compare


def compare(paths: list[str | Path], out_dir: str | Path, names: list[str] | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` comparing ``paths``: evaluation folders (``aimc
    eval``) or training run folders (``aimc train``), all of one kind."""
    if not paths:
        raise UserError(f"aimc compare needs at least one folder; {ACCEPTS}")
    if names and len(names) != len(paths):
        raise UserError(f"--names gives {len(names)} names for {len(paths)} runs")
    kinds = [run_kind(p) for p in paths]
    if len(set(kinds)) > 1:
        label = {"eval": "an evaluation folder", "train": "a training run", "continual": "a continual run"}
        listing = "; ".join(f"{p} is {label[k]}" for p, k in zip(paths, kinds))
        raise UserError(
            f"aimc compare compares folders of one kind, got a mix: {listing}. Compare the evaluations together, or "
            "the training runs together (to compare a run's weights in play, evaluate them first: "
            "aimc eval --weights RUN/final.safetensors --out EVAL)"
        )
    if kinds[0] == "continual":
        runs: list[Any] = [load_continual_run(p, names[i] if names else None) for i, p in enumerate(paths)]
    elif kinds[0] == "train":
        runs = [load_train_run(p, names[i] if names else None) for i, p in enumerate(paths)]
        trained = {r.trains for r in runs}
        if len(trained) > 1:
            listing = "; ".join(f"{r.path} trained a {r.trains}" for r in runs)
            raise UserError(f"aimc compare compares training runs of one kind, got a mix: {listing}. Compare policy "
                            "runs (aimc train) together, prior runs (aimc prior train) together, embedder runs "
                            "(aimc mineclip train) together")
    else:
        runs = [load_eval_run(p, names[i] if names else None) for i, p in enumerate(paths)]
    seen: dict[str, int] = {}
    for r in runs:  # make names unique (two folders called "eval")
        if r.name in seen:
            seen[r.name] += 1
            r.name = f"{r.name} ({seen[r.name]})"
        else:
            seen[r.name] = 1
    out_dir = make_dir(out_dir, "folder for report.html and report.md (--out)")
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    if kinds[0] == "continual":
        atomic_write_text(html_path, compare_continual_html(runs))
        atomic_write_text(md_path, compare_continual_markdown(runs))
    elif kinds[0] == "train":
        atomic_write_text(html_path, compare_train_html(runs))
        atomic_write_text(md_path, compare_train_markdown(runs))
    else:
        atomic_write_text(html_path, compare_html(runs))
        atomic_write_text(md_path, compare_markdown(runs))
    return html_path, md_path
