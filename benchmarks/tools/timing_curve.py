"""A per-step series of a train timing file (``metrics/timing/train.json``) as a DVCLive-style TSV
(``step`` from 0, then the series), for the reports that read curves: learning_report.py and
scale_report.py. Usage: python benchmarks/tools/timing_curve.py TIMING_JSON SERIES > OUT.tsv"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("timing", type=Path, help="a train timing file (metrics/timing/train.json)")
    parser.add_argument("series", help="a per-step series of it (samples_per_s, tokens_per_s, ...)")
    args = parser.parse_args(argv)
    per_step = json.loads(args.timing.read_text())["per_step"]
    rows = [f"{step - 1}\t{value}" for step, value in zip(per_step["step"], per_step[args.series]) if value is not None]
    sys.stdout.write("\n".join([f"step\t{args.series}", *rows]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
