"""Pull-request report: how the workspace's metrics and params differ from a base revision.

``make report BASE=main`` (``python -m av_grounding.report --base main``) prints markdown: first
the headline metrics of the final model (``final`` in ``metrics/eval.json``: AP2D, AP3D,
centre-distance mAP, recall, label accuracy, the recipe's metrics) at the base and in the
workspace, then ``dvc metrics diff <base> --md``, then ``dvc params diff <base> --md``, and last,
folded, the timing of the workspace's last run (``metrics/timing/*.json``: wall times and
rates, which differ on every run and so are no DVC metric and have no base to compare with).
CI posts it as a pull-request comment (``.github/workflows/pr-report.yml``). Not a
pipeline stage: it reads what the stages wrote and git history, so it lives beside the stage
CLI, not in it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .errors import PipelineError
from .evaluation.table import HEADLINE_ROWS, lookup

DVC_TIMEOUT_S = 300
EVAL_METRICS = "metrics/eval.json"
TIMING = "metrics/timing"


class ReportError(PipelineError, RuntimeError):
    """DVC could not compare against the base revision; the message holds DVC's own output."""


def dvc_diff(kind: str, base: str, repo: Path) -> str:
    """``dvc <kind> diff <base> --md`` in ``repo``: a markdown table, or "" when no row changed
    (DVC then prints nothing or only the table's header)."""
    command = [sys.executable, "-m", "dvc", kind, "diff", base, "--md"]
    try:
        result = subprocess.run(command, cwd=repo, check=False, capture_output=True, text=True, timeout=DVC_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ReportError(f"`dvc {kind} diff {base}` in {repo} ran over {DVC_TIMEOUT_S} s") from exc
    if result.returncode != 0:
        raise ReportError(f"`dvc {kind} diff {base}` failed in {repo} (exit {result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()}")
    table = result.stdout.strip()
    has_rows = len([line for line in table.splitlines() if line.startswith("|")]) > 2
    return table if has_rows else ""


def _scalars(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every number or string in nested dicts; lists (per-step series) left out."""
    found = []
    for key, value in values.items():
        if isinstance(value, dict):
            found += _scalars(value, f"{prefix}{key}.")
        elif not isinstance(value, list):
            found.append((f"{prefix}{key}", value))
    return found


def timing_table(repo: Path) -> str:
    """Markdown table of the workspace's timing files (file, key, value), or "" without any."""
    rows = [f"| {path.relative_to(repo)} | {key} | {value} |" for path in sorted((repo / TIMING).glob("*.json"))
            for key, value in _scalars(json.loads(path.read_text()))]
    return "\n".join(["| Path | Key | Last run |", "|---|---|---|", *rows]) if rows else ""


def eval_metrics(revision: str | None, repo: Path) -> dict[str, Any] | None:
    """``metrics/eval.json`` of a git revision (None: the workspace), or None where it is absent."""
    if revision is None:
        path = repo / EVAL_METRICS
        return json.loads(path.read_text()) if path.exists() else None
    shown = subprocess.run(["git", "show", f"{revision}:{EVAL_METRICS}"], cwd=repo, check=False, capture_output=True,
                           text=True)
    return json.loads(shown.stdout) if shown.returncode == 0 else None


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def headline(base: str, repo: Path) -> str:
    """Markdown table of the final column's headline metrics at ``base`` and in the workspace,
    or a line saying there is none."""
    old, new = (eval_metrics(revision, repo) for revision in (base, None))
    if not new or "final" not in new:
        return f"No final column in {EVAL_METRICS}."
    old_final = (old or {}).get("final", {})
    rows = [f"| Metric | {base} | workspace | Change |", "|---|---|---|---|"]
    for label, path in HEADLINE_ROWS:
        before, after = lookup(old_final, path), lookup(new["final"], path)
        change = "-" if before is None or after is None else f"{after - before:+.4g}"
        rows.append(f"| {label} | {_cell(before)} | {_cell(after)} | {change} |")
    return "\n".join(rows)


def build_report(base: str, repo: Path = Path(".")) -> str:
    """Markdown: headline metrics of the final model, then the metrics and params sections (each
    a table or a 'no change' line), then the last run's timing, folded."""
    top = headline(base, repo)
    metrics = dvc_diff("metrics", base, repo)
    params = dvc_diff("params", base, repo)
    timing = timing_table(repo)
    sections = [f"# Pipeline report: workspace against `{base}`",
                f"## Headline: final model\n\n{top}",
                f"## Metrics\n\n{metrics or 'No metrics changed.'}",
                f"## Parameters\n\n{params or 'No params changed.'}"]
    if timing:
        sections.append("## Timing of the last run\n\n<details><summary>Wall times and rates: they differ on every "
                        f"run, so they are not compared</summary>\n\n{timing}\n\n</details>")
    return "\n\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m av_grounding.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="git revision to compare with (default: %(default)s)")
    parser.add_argument("--output", type=Path, help="write the markdown here instead of stdout")
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository root (default: current folder)")
    args = parser.parse_args(argv)
    try:
        report = build_report(args.base, args.repo)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output:
        args.output.write_text(report)
    else:
        sys.stdout.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
