"""A per-step series of a train timing file (``metrics/timing/train.json``) as a DVCLive-style TSV
(``step`` from 0, then the series), for the reports that read curves: learning_report.py and
scale_report.py. Usage: python benchmarks/timing_curve.py TIMING_JSON SERIES > OUT.tsv"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    timing, series = Path(argv[0]), argv[1]
    per_step = json.loads(timing.read_text())["per_step"]
    rows = [f"{step - 1}\t{value}" for step, value in zip(per_step["step"], per_step[series]) if value is not None]
    sys.stdout.write("\n".join([f"step\t{series}", *rows]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
