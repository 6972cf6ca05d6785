"""The web UI's pages, rendered on the server as plain HTML (static/app.js adds live updates).

Nothing is fetched from outside the server: the pages work offline and behind a firewall.
Every value from a config or a run goes through `escape`.
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any

from sae.service.db import KINDS

TABLE_METRICS = ("l0", "explained_variance", "dead_latents", "mcc", "f1")
COMPARE_METRICS = (
    "arch", "d_sae", "l0", "true_l0", "explained_variance", "dead_latents", "mcc", "f1",
    "precision", "recall", "frac_recovered_90", "ce_loss_recovered", "kl_divergence", "seconds",
)  # fmt: skip
EXAMPLE = """seed: 0
data:
  synthetic: {num_features: 48, hidden_dim: 32}
sae: {arch: topk, d_sae: 48, k: [2, 4]}
train: {samples: 20000, batch_size: 128}
eval: {samples: 4096}
logging: {wandb: false, progress: false}
"""


def _page(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · sae serve</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/style.css"></head>
<body><nav><a href="/" class="brand">sae serve</a> <a href="/">jobs</a> <a href="/submit">submit</a>
<a href="/compare">compare</a> <a href="/openapi.json">API</a></nav>
<main>{body}</main><script src="/static/app.js"></script></body></html>"""


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return escape(json.dumps(value))
    return escape(str(value))


def eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s")


def sae_rows(job: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(SAE name, metrics) per SAE of a done job: one row, or one per SAE of a `saes:` job."""
    metrics = job.get("metrics") or {}
    if metrics and all(isinstance(v, dict) and "l0" in v for v in metrics.values()):
        return list(metrics.items())
    return [("sae", metrics)]


def _progress_cell(job: dict[str, Any]) -> str:
    fraction = job["progress"].get("fraction")
    value = "" if fraction is None else f' value="{fraction:.4f}"'
    label = "" if fraction is None else f"{100 * fraction:.0f}%"
    return f'<progress max="1"{value}></progress> <span class="pct">{label}</span>'


def _job_row(job: dict[str, Any]) -> str:
    rows = sae_rows(job)
    shown = rows[0][1] if len(rows) == 1 else {}
    cells = "".join(f"<td>{fmt(shown.get(k))}</td>" for k in TABLE_METRICS)
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(job["created"]))
    sweep = f'<a href="/compare?sweep={job["sweep"]}">{job["sweep"]}</a>' if job["sweep"] else ""
    saes = f" ({len(rows)} SAEs)" if len(rows) > 1 else ""
    return (
        f'<tr data-job="{job["id"]}"><td><input type="checkbox" name="ids" value="{job["id"]}"></td>'
        f'<td><a href="/jobs/{job["id"]}">{job["id"]}</a></td><td>{escape(job["kind"])}{saes}</td>'
        f'<td><span class="state {job["state"]}">{job["state"]}</span></td>'
        f"<td>{_progress_cell(job)}</td><td class=\"eta\">{eta(job['progress'].get('eta_seconds'))}</td>"
        f"{cells}<td>{sweep}</td><td>{created}</td></tr>"
    )


def jobs_page(jobs: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{k}</th>" for k in ("", "id", "kind", "state", "progress", "ETA",
                                               *TABLE_METRICS, "sweep", "created"))  # fmt: skip
    rows = "".join(_job_row(job) for job in jobs) or (
        '<tr><td colspan="13">No jobs yet. <a href="/submit">Submit one.</a></td></tr>')
    return _page("jobs", f"""<h1>Jobs</h1>
<form action="/compare" method="get" id="jobs-form">
<table class="jobs" id="jobs"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>
<button type="submit">Compare selected</button></form>""")


def submit_page(text: str = EXAMPLE, kind: str = "toy", error: str | None = None) -> str:
    options = "".join(
        f'<option value="{k}"{" selected" if k == kind else ""}>{k}</option>' for k in KINDS
    )
    shown = f'<p class="error" id="error">{escape(error)}</p>' if error else ""
    return _page("submit", f"""<h1>Submit a job</h1>
<p>A config in the YAML schema of the command line. Lists on keys that take one value make a
sweep: <code>sae.*</code> lists train together on shared batches, other lists make one job each.</p>
<form method="post" action="/submit" id="submit-form">
<label>kind <select name="kind" id="kind">{options}</select></label>{shown}
<textarea name="config" id="config" rows="22" spellcheck="false">{escape(text)}</textarea>
<button type="submit" id="submit">Submit</button></form>""")


def _metrics_table(job: dict[str, Any]) -> str:
    rows = sae_rows(job)
    if not rows[0][1]:
        return "<p>Metrics appear when the job is done.</p>"
    keys = [k for k in rows[0][1] if not isinstance(rows[0][1][k], dict | list)]
    head = "".join(f"<th>{escape(name)}</th>" for name, _ in rows)
    body = "".join(
        f"<tr><th>{escape(k)}</th>{''.join(f'<td>{fmt(m.get(k))}</td>' for _, m in rows)}</tr>"
        for k in keys
    )
    return f'<table class="metrics"><tr><th></th>{head}</tr>{body}</table>'


def _files(job: dict[str, Any]) -> str:
    base = f"/api/jobs/{job['id']}"
    links = [f'<a href="{base}/files/{escape(p)}">{escape(p)}</a>' for p in job["artifacts"]
             if p.endswith(("report.html", "feature_browser.json", "recovery.json"))]  # fmt: skip
    downloads = [
        f'<a class="button" href="{base}/download?sae={escape(name)}">download {escape(name)} (zip)</a>'
        for name in job["saelens"]
    ]
    return " ".join(links + downloads)


def job_page(job: dict[str, Any]) -> str:
    jid = job["id"]
    report = next((p for p in job["artifacts"] if p == "report.html"), None)
    frame = f'<iframe src="/api/jobs/{jid}/files/report.html" class="report"></iframe>' if report else ""
    params = f"<p>sweep {job['sweep']}: {fmt(job['params'])}</p>" if job["sweep"] else ""
    error = f'<p class="error">{escape(job["error"])}</p>' if job["error"] else ""
    return _page(f"job {jid}", f"""<h1>Job {jid} <small>{escape(job['kind'])}</small>
<span class="state {job['state']}" id="state">{job['state']}</span></h1>{params}{error}
<p>{_progress_cell(job)} <span id="live"></span> ETA <span class="eta">{eta(job['progress'].get('eta_seconds'))}</span></p>
<p><button data-post="/api/jobs/{jid}/cancel">cancel</button>
<button data-post="/api/jobs/{jid}/retry">retry</button>
<a class="button" id="compare-link" href="/compare?ids={jid}">compare</a></p>
<div id="curves" data-job="{jid}" data-live="{'1' if job['state'] in ('queued', 'running') else ''}"></div>
<h2>Metrics</h2>{_metrics_table(job)}
<h2>Artifacts</h2><p>{_files(job) or 'none yet'}</p>
<form id="publish" data-job="{jid}"><label>publish to <input name="to" placeholder="folder name or hf://user/repo"></label>
<button type="submit">publish</button> <span id="publish-result"></span></form>
<h2>Logs</h2><pre id="logs" data-job="{jid}"></pre>
<h2>Config</h2><pre>{escape(job['config'])}</pre>{frame}""")


def _param_columns(jobs: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for job in jobs:
        for key in job["params"]:
            if key != "saes" and key not in keys:
                keys.append(key)
    return keys


def compare_page(
    jobs: list[dict[str, Any]], curves: dict[int, list[dict[str, Any]]], sweep: int | None
) -> str:
    if not jobs:
        return _page("compare", "<h1>Compare</h1><p>Pick jobs on the <a href=\"/\">jobs page</a>"
                                " (or open a sweep) to compare them.</p>")  # fmt: skip
    params = _param_columns(jobs)
    rows, points = [], []
    for job in jobs:
        sae_params = job["params"].get("saes", {})
        for name, metrics in sae_rows(job):
            label = f"{job['id']}" + (f"/{name}" if name != "sae" else "")
            swept = {**{k: job["params"].get(k) for k in params}, **sae_params.get(name, {})}
            rows.append((label, job, swept, metrics))
            if "l0" in metrics:
                points.append({"label": label, "l0": metrics["l0"],
                               "ev": metrics.get("explained_variance"), "f1": metrics.get("f1")})
    swept_keys = list(dict.fromkeys(k for _, _, swept, _ in rows for k in swept))
    shown = [k for k in COMPARE_METRICS if any(k in m for _, _, _, m in rows)]
    head = "".join(f"<th>{escape(k)}</th>" for k in ("job", "state", *swept_keys, *shown))
    body = "".join(
        f'<tr><td><a href="/jobs/{job["id"]}">{escape(label)}</a></td>'
        f'<td><span class="state {job["state"]}">{job["state"]}</span></td>'
        + "".join(f"<td>{fmt(swept.get(k))}</td>" for k in swept_keys)
        + "".join(f"<td>{fmt(metrics.get(k))}</td>" for k in shown) + "</tr>"
        for label, job, swept, metrics in rows
    )
    series = {}
    for job_id, records in curves.items():
        for record in records:
            label = f"{job_id}" + (f"/{record['sae']}" if "sae" in record else "")
            series.setdefault(label, []).append(record)
    data = json.dumps({"series": series, "points": points}).replace("</", "<\\/")
    title = f"Sweep {sweep}" if sweep is not None else "Compare"
    return _page("compare", f"""<h1>{title}</h1>
<table class="compare" id="compare">{f'<thead><tr>{head}</tr></thead>'}<tbody>{body}</tbody></table>
<h2>Pareto: L0 against explained variance{' and f1' if any(p['f1'] is not None for p in points) else ''}</h2>
<div id="pareto"></div><h2>Training curves</h2><div id="overlay"></div>
<script type="application/json" id="compare-data">{data}</script>""")


def login_page(error: str | None = None) -> str:
    shown = f'<p class="error">{escape(error)}</p>' if error else ""
    return _page("login", f"""<h1>Token</h1>{shown}<form method="post" action="/login">
<input type="password" name="token" autocomplete="off"> <button type="submit">enter</button></form>""")
