"""`format` stage: see `av_grounding.cli` and `python stages/format.py --help`."""

import sys

from av_grounding.cli import main

if __name__ == "__main__":
    sys.exit(main(["format", *sys.argv[1:]]))
