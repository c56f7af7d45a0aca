"""`filter` stage: see `av_grounding.cli` and `python stages/filter.py --help`."""

import sys

from av_grounding.cli import main

if __name__ == "__main__":
    sys.exit(main(["filter", *sys.argv[1:]]))
