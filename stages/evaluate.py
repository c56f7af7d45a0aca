"""`evaluate` stage: see `av_grounding.cli` and `python stages/evaluate.py --help`."""

import sys

from av_grounding.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
