"""Pull-request report: how the workspace's metrics and params differ from a base revision.

``make report BASE=main`` (``python -m av_grounding.report --base main``) prints markdown made of
``dvc metrics diff <base> --md`` and ``dvc params diff <base> --md`` under headings; CI posts it
as a pull-request comment (``.github/workflows/pr-report.yml``). Not a pipeline stage: it reads
what the stages wrote and git history, so it lives beside the stage CLI, not in it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .errors import PipelineError

DVC_TIMEOUT_S = 300


class ReportError(PipelineError, RuntimeError):
    """DVC could not compare against the base revision; the message holds DVC's own output."""


def dvc_diff(kind: str, base: str, repo: Path) -> str:
    """``dvc <kind> diff <base> --md`` in ``repo``: a markdown table, or "" when no row changed
    (DVC then prints nothing or only the table's header)."""
    command = [sys.executable, "-m", "dvc", kind, "diff", base, "--md"]
    try:
        result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=DVC_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ReportError(f"`dvc {kind} diff {base}` in {repo} ran over {DVC_TIMEOUT_S} s") from exc
    if result.returncode != 0:
        raise ReportError(f"`dvc {kind} diff {base}` failed in {repo} (exit {result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()}")
    table = result.stdout.strip()
    has_rows = len([line for line in table.splitlines() if line.startswith("|")]) > 2
    return table if has_rows else ""


def build_report(base: str, repo: Path = Path(".")) -> str:
    """Markdown with a metrics section and a params section, each a table or a 'no change' line."""
    sections = [f"# Pipeline report: workspace against `{base}`"]
    for kind, title in (("metrics", "Metrics"), ("params", "Parameters")):
        table = dvc_diff(kind, base, repo)
        sections.append(f"## {title}\n\n{table or f'No {kind} changed.'}")
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
