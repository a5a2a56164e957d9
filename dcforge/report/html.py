"""A self-contained HTML report (tables + plotly charts, plotly.js inlined once): opens offline in any browser."""

from __future__ import annotations

import html
import itertools
import json
from functools import lru_cache

from dcforge.report.nodes import node_action, node_problem, node_rows, summary_line

STATUS_COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "error": "#bf3989", "skipped": "#6e7781",
                  "running": "#9a6700", "interrupted": "#bc4c00", "nothing_verified": "#cf222e"}

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#1f2328}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem} th,td{border:1px solid #d0d7de;padding:.35rem .6rem;
text-align:left;vertical-align:top;font-size:.92rem} th{background:#f6f8fa}
.badge{display:inline-block;padding:.1rem .55rem;border-radius:1rem;color:#fff;font-weight:600;font-size:.85rem}
.muted{color:#59636e} code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85rem}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto} td.num{text-align:right;font-variant-numeric:tabular-nums}
details{margin:.4rem 0} tr.outlier td{background:#ffebe9} td.outlier-figure{font-weight:700;color:#cf222e}
"""


def badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#6e7781")
    return f'<span class="badge" style="background:{colour}">{html.escape(status.replace("_", " ").upper())}</span>'


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def plot_html(plot: dict, div_id: str) -> str:
    import plotly.graph_objects as go

    figure = go.Figure()
    for series in plot.get("series", []):
        if plot.get("kind") == "histogram":
            figure.add_trace(go.Histogram(x=series["y"], name=series["name"], opacity=0.75))
        elif plot.get("kind") == "bar":
            figure.add_trace(go.Bar(x=series["x"], y=series["y"], name=series["name"]))
        else:
            mode = "lines+markers" if plot.get("kind") == "line" else "markers"
            figure.add_trace(go.Scatter(x=series["x"], y=series["y"], name=series["name"], mode=mode))
    for marker in plot.get("markers", []):
        figure.add_vline(x=marker["x"], line_dash="dash", line_color="#cf222e",
                         annotation_text=str(marker.get("label", "")))
    figure.update_layout(title=plot.get("title", ""), xaxis_title=plot.get("x_label", ""),
                         yaxis_title=plot.get("y_label", ""), height=380, margin=dict(l=60, r=20, t=50, b=50),
                         barmode="overlay" if plot.get("kind") == "histogram" else None)
    if plot.get("log_x"):
        figure.update_xaxes(type="log")
    if plot.get("log_y"):
        figure.update_yaxes(type="log")
    return figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id)


def _format(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:.4g}"
    if isinstance(value, list):
        return html.escape(", ".join(str(item) for item in value))
    return html.escape(str(value))


def _aliases_html(metric: dict) -> str:
    """The metric's other names (AIPerf's, a former one) under its key, as report.json lists them."""
    aliases = metric.get("aliases") or {}
    if not aliases:
        return ""
    e = html.escape
    return "<br><small class='muted'>" + " · ".join(f"{e(source)}: <code>{e(name)}</code>"
                                                    for source, name in aliases.items()) + "</small>"


def _definition(metric: dict) -> str:
    """Tooltip text of a metric: its meaning and the formula it was computed with."""
    return " — ".join(part for part in (metric.get("meaning", ""), metric.get("formula", "")) if part)


def _declared_definitions() -> dict[str, str]:
    """`<check>.<key>` -> tooltip, from the checks' declarations: for SLOs on metrics this run did not produce."""
    from dcforge.metrics_catalogue import catalogue

    return {key: _definition({"meaning": entry.spec.meaning, "formula": entry.spec.formula})
            for entry in catalogue() for key in entry.slo_keys}


def _metric_link(key: str, metrics: dict[str, dict], declared: dict[str, str]) -> str:
    """`<check>.<key>` linked to its row in its check's metric table, the definition as a tooltip: one hop.
    A metric the run did not produce (its check skipped or errored) gets its declaration's definition."""
    e = html.escape
    if key in metrics:
        return f"<a href='#metric-{e(key)}' title='{e(_definition(metrics[key]))}'><code>{e(key)}</code></a>"
    if key in declared:
        return f"<span title='{e(declared[key])}'><code>{e(key)}</code></span>"
    return f"<code>{e(key)}</code>"


def render_html(report: dict) -> str:
    """The whole report as one self-contained page: header, check and SLO tables, baseline, then one section
    per check (metrics, plots, artefacts, nodes, details)."""
    metrics = {f"{check['name']}.{name}": metric
               for check in report.get("checks", []) for name, metric in check.get("metrics", {}).items()}
    declared = _declared_definitions()
    parts = _header(report) + _deploy_section(report.get("deploy")) + _checks_table(report)
    parts += _remediation_section(report.get("remediation"))
    parts += _slo_section(report, metrics, declared)
    parts += _baseline_section(report.get("baseline"), metrics, declared)
    plot_ids = (f"plot-{number}" for number in itertools.count(1))
    for check in report.get("checks", []):
        parts += _check_section(check, plot_ids)
    parts.append("<h2>Metric formulas</h2><p class='muted'>Every metric names the formula it was computed with and "
                 "what it means (hover a metric or an SLO); the definitions are in docs/metrics.md of the dcforge "
                 "repository, one section per check (nccl-tests bus bandwidth, torchtitan FLOPs per token, "
                 "vLLM goodput, exact percentiles from per-request logs), and <code>dcforge metrics</code> lists "
                 "every metric each check can report.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _header(report: dict) -> list[str]:
    meta = report["metadata"]
    e = html.escape
    return [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>dcforge acceptance — {e(meta['environment'])}</title><style>{STYLE}</style>",
        f"<script>{_plotly_js()}</script></head><body>",
        f"<h1>dcforge acceptance: {e(meta['environment'])} {badge(report['status'])}</h1>",
        f"<p class='muted'>started {e(meta.get('started_at', ''))} · finished {e(meta.get('finished_at') or '—')} · "
        f"host {e(meta.get('hostname', ''))} · dcforge {e(meta.get('dcforge_version', ''))} · commit "
        f"<code>{e(meta.get('git_commit', ''))}</code> · env file <code>{e(meta.get('env_file', ''))}</code> "
        f"(sha256 <code>{e(meta.get('env_sha256', '')[:16])}</code>)</p>",
        *([f"<p><strong>{e(report['status_reason'])}</strong></p>"] if report.get("status_reason") else []),
    ]


def _checks_table(report: dict) -> list[str]:
    e = html.escape
    parts = ["<h2>Checks</h2><table><tr><th>check</th><th>status</th><th>duration</th><th>reason</th></tr>"]
    for check in report.get("checks", []):
        parts.append(f"<tr><td><a href='#check-{e(check['name'])}'>{e(check['name'])}</a></td>"
                     f"<td>{badge(check['status'])}</td><td class='num'>{check.get('duration_s', 0):.1f} s</td>"
                     f"<td>{e(check.get('reason', ''))}</td></tr>")
    parts.append("</table>")
    return parts


def _deploy_section(deploy: dict | None) -> list[str]:
    """`dcforge up`: the engine's versions, what it changed, how long it took, the stack's outputs."""
    if not deploy:
        return []
    e = html.escape
    changes = ", ".join(f"{count} {op}" for op, count in sorted(deploy["changes"].items()) if count) or "no changes"
    versions = " · ".join(f"{e(name)} <code>{e(version)}</code>" for name, version in deploy["versions"].items())
    parts = [f"<h2>Deploy</h2><p>pulumi {e(deploy['operation'])} of stack <code>{e(deploy['env_name'])}</code> in "
             f"{deploy['duration_s']:.1f} s ({e(deploy['backend_url'])}): {e(changes)}</p>",
             f"<p class='muted'>{versions}</p>"]
    if deploy.get("outputs"):
        parts.append("<table><tr><th>output</th><th>value</th></tr>")
        parts += [f"<tr><td>{e(name)}</td><td><code>{e(str(value))}</code></td></tr>"
                  for name, value in deploy["outputs"].items()]
        parts.append("</table>")
    return parts


def _remediation_section(remediation: dict | None) -> list[str]:
    """`dcforge accept --taint-failed/--mark-nodes`: which nodes were (or, dry, would be) tainted, untainted or
    released, and why; the conditions set."""
    if not remediation:
        return []

    e = html.escape
    parts = [f"<h2>Remediation</h2><p>{e(summary_line(remediation))}</p>"]
    if remediation.get("actions"):
        parts.append("<table><tr><th>node</th><th>action</th><th>reason</th></tr>")
        parts += [f"<tr><td>{e(a['node'])}</td><td>{badge('error') if a['action'] == 'error' else e(a['action'])}"
                  f"</td><td>{e(a['reason'])}</td></tr>" for a in remediation["actions"]]
        parts.append("</table>")
    if remediation.get("marks"):  # --mark-nodes: the condition, annotation and events of each node
        parts.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in remediation["marks"]) + "</ul>")
    return parts


def _slo_section(report: dict, metrics: dict[str, dict], declared: dict[str, str]) -> list[str]:
    e = html.escape
    if not report.get("slos"):
        return ["<h2>SLOs</h2>", "<p class='muted'>This environment declares no SLOs.</p>"]
    parts = ["<h2>SLOs</h2>", "<table><tr><th>metric</th><th>SLO</th><th>value</th><th>verdict</th><th>reason</th>"
             "<th>threshold from</th></tr>"]
    for slo in report["slos"]:
        parts.append(f"<tr><td>{_metric_link(slo['metric'], metrics, declared)}</td>"
                     f"<td><code>{e(slo['expression'])}</code></td>"
                     f"<td class='num'>{_format(slo['value'])}</td><td>{badge(slo['verdict'])}</td>"
                     f"<td>{e(slo.get('reason', ''))}</td>"
                     f"<td>{e(slo.get('source', 'environment file'))}</td></tr>")
    parts.append("</table>")
    return parts


def _baseline_section(baseline: dict | None, metrics: dict[str, dict], declared: dict[str, str]) -> list[str]:
    if not baseline:
        return []
    e = html.escape
    regressions = [c for c in baseline["comparisons"] if c["regressed"]]
    parts = [f"<h2>Baseline</h2><p>Compared with <code>{e(baseline['path'])}</code> (tolerance "
             f"{baseline['tolerance']:.0%}): {len(regressions)} regression(s) in "
             f"{len(baseline['comparisons'])} directional metrics.</p>",
             "<table><tr><th>metric</th><th>baseline</th><th>current</th><th>change</th><th>better</th><th></th></tr>"]
    for c in baseline["comparisons"]:
        flag = badge("fail") if c["regressed"] else ""
        parts.append(f"<tr><td>{_metric_link(c['metric'], metrics, declared)}</td>"
                     f"<td class='num'>{_format(c['baseline'])}</td>"
                     f"<td class='num'>{_format(c['current'])}</td><td class='num'>{c['change']:+.1%}</td>"
                     f"<td>{e(c['better'])}</td><td>{flag}</td></tr>")
    parts.append("</table>")
    return parts


def _check_section(check: dict, plot_ids) -> list[str]:
    e = html.escape
    parts = [f"<h2 id='check-{e(check['name'])}'>{e(check['name'])} {badge(check['status'])}</h2>"]
    if check.get("reason"):
        parts.append(f"<p>{e(check['reason'])}</p>")
    if check.get("metrics"):
        parts.append("<table><tr><th>metric</th><th>value</th><th>unit</th><th>better</th><th>meaning</th>"
                     "<th>formula</th></tr>")
        for name, metric in check["metrics"].items():
            key = f"{check['name']}.{name}"
            parts.append(f"<tr id='metric-{e(key)}' title='{e(_definition(metric))}'>"
                         f"<td><code>{e(name)}</code>{_aliases_html(metric)}</td>"
                         f"<td class='num'>{_format(metric['value'])}</td>"
                         f"<td>{e(metric.get('unit', ''))}</td><td>{e(metric.get('better') or '')}</td>"
                         f"<td>{e(metric.get('meaning', ''))}</td>"
                         f"<td><code>{e(metric.get('formula', ''))}</code></td></tr>")
        parts.append("</table>")
    for plot in check.get("plots", []):
        parts.append(plot_html(plot, next(plot_ids)))
    if check.get("artefacts"):
        links = " · ".join(f"<a href='{e(path)}'>{e(name)}</a>" for name, path in check["artefacts"].items())
        parts.append(f"<p>Artefacts: {links}</p>")
    parts += _node_table(check)
    if check.get("details"):
        parts.append("<details><summary>details</summary><pre>"
                     f"{e(json.dumps(check['details'], indent=2, default=str))}</pre></details>")
    return parts


def _node_table(check: dict) -> list[str]:
    """Per-node figures of a multi-node check; a node with a problem (outlier, failure) is highlighted, and so is
    each figure in which it is an outlier (`outlier_in`)."""
    rows = node_rows(check)
    if not rows:
        return []
    e = html.escape
    columns = list(dict.fromkeys(key for row in rows for key in row))
    parts = ["<table class='nodes'><tr>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "<th></th></tr>"]
    for row in rows:
        problem = node_problem(row)
        row = {**row, "action": node_action(row).label} if "action" in row else row  # words, not the enum value
        parts.append(f"<tr{' class=outlier' if problem else ''} title='{e(problem)}'>"
                     + "".join(f"<td class=outlier-figure>{_format(row.get(c))}</td>"
                               if c in (row.get("outlier_in") or ()) else f"<td>{_format(row.get(c))}</td>"
                               for c in columns)
                     + f"<td>{badge('fail') if problem else badge('pass')}</td></tr>")
    parts.append("</table>")
    return parts
