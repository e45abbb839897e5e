"""What a search leaves behind: summary, the best config as a preset, plots, an HTML page.

    DIR/summary.json      every trial (state, value, parameters, frames, seconds, run dir) and the best
    DIR/best.yaml         the best trial's config as a preset: aimc train --preset DIR/best.yaml
    DIR/plots/*.png       optimisation history, parameter importances, parallel coordinates
                          (Optuna's matplotlib backend)
    DIR/report.html       all of it on one self-contained page
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import yaml

from aimc.utils.io import atomic_write_bytes, atomic_write_text

PLOTS = {
    "history": ("plot_optimization_history", "Optimisation history: each trial's value and the best so far"),
    "importances": ("plot_param_importances", "Parameter importances (fANOVA): how much each key explains the value"),
    "parallel": ("plot_parallel_coordinate", "Parallel coordinates: each line is a trial, coloured by its value"),
}


def nested(overrides: list[str]) -> dict:
    """``["optim.lr=1e-4", "data.stores=[a]"]`` -> ``{"optim": {"lr": 1e-4}, "data": {"stores": ["a"]}}``."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def best_preset(study, preset: str | None) -> str:
    """The best trial's config as preset YAML: the preset it started from plus every override."""
    best = study.best_trial
    body = {"base": str(preset)} if preset else {}
    body.update(nested(best.user_attrs.get("overrides", [])))
    head = (f"# aimc tune: best of study {study.study_name!r} (trial {best.number}, value {best.value:.6g}).\n"
            f"# Train with: aimc train --preset THIS_FILE --out RUN\n")
    return head + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "frames": t.user_attrs.get("frames"), "seconds": t.user_attrs.get("seconds"),
            "run_dir": t.user_attrs.get("run_dir"), "retry_of": t.system_attrs.get("failed_trial"),
            "last_report": (max(t.intermediate_values) if t.intermediate_values else None),
        })
    return rows


def plot_pngs(study) -> dict[str, bytes]:
    """The three plots as PNG bytes (a plot Optuna cannot draw yet, e.g. importances of one trial, is left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    out = {}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    for name, (fn, _) in PLOTS.items():
        if not complete or (name == "importances" and len(complete) < 2):
            continue
        try:
            ax = getattr(ovm, fn)(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(9, 5)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        out[name] = buf.getvalue()
    return out


def write_report(study, out_dir: str | Path, preset: str | None, space_source: str = "") -> dict:
    """Write summary.json, best.yaml, plots/ and report.html into ``out_dir``; returns the summary."""
    from aimc.eval.report import html_page, png_data_uri

    out = Path(out_dir)
    rows = trial_rows(study)
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    summary: dict[str, Any] = {"study": study.study_name, "direction": study.direction.name.lower(),
                               "space": space_source, "preset": preset, "states": states, "trials": rows, "best": None}
    has_best = any(r["state"] == "COMPLETE" for r in rows)
    if has_best:
        best = study.best_trial
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           "run_dir": best.user_attrs.get("run_dir"), "preset_file": str(out / "best.yaml")}
        atomic_write_text(out / "best.yaml", best_preset(study, preset))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    pngs = plot_pngs(study)
    for name, png in pngs.items():
        atomic_write_bytes(out / "plots" / f"{name}.png", png)

    esc = html.escape
    parts = [f"<h1>aimc tune: {esc(study.study_name)}</h1>",
             f"<p>{len(rows)} trials ({', '.join(f'{v} {k.lower()}' for k, v in sorted(states.items()))}); "
             f"direction: {esc(summary['direction'])}; preset: {esc(str(preset))}; space: {esc(space_source)}.</p>"]
    if summary["best"]:
        b = summary["best"]
        parts.append(f"<h2 id=\"best\">Best trial: {b['number']} (value {b['value']:.6g})</h2><table>"
                     + "".join(f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>" for k, v in b["params"].items())
                     + f"</table><p>Preset: <code>{esc(b['preset_file'])}</code> "
                     f"(<code>aimc train --preset {esc(b['preset_file'])} --out RUN</code>).</p>")
    for name, (_, caption) in PLOTS.items():
        if name in pngs:
            parts.append(f"<h2>{esc(caption.split(':')[0])}</h2><figure><img alt=\"{esc(name)}\" "
                         f"src=\"{png_data_uri(pngs[name])}\"><figcaption>{esc(caption)}</figcaption></figure>")
    keys = sorted({k for r in rows for k in r["params"]})
    parts.append("<h2 id=\"trials\">Trials</h2><table><tr><th>#</th><th>state</th><th>value</th>"
                 + "".join(f"<th>{esc(k)}</th>" for k in keys) + "<th>frames</th><th>seconds</th><th>note</th></tr>")
    for r in rows:
        note = f"retry of {r['retry_of']}" if r["retry_of"] is not None else ""
        parts.append(f"<tr><td>{r['number']}</td><td>{esc(r['state'].lower())}</td><td>{esc(_fmt(r['value']))}</td>"
                     + "".join(f"<td>{esc(_fmt(r['params'].get(k)))}</td>" for k in keys)
                     + f"<td>{esc(_fmt(r['frames']))}</td><td>{esc(_fmt(r['seconds']))}</td><td>{esc(note)}</td></tr>")
    parts.append("</table>")
    atomic_write_text(out / "report.html", html_page(f"aimc tune: {study.study_name}", parts))
    return summary


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
