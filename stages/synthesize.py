"""`synthesize` stage: see `av_grounding.cli` and `python stages/synthesize.py --help`."""

import sys

from av_grounding.cli import main

if __name__ == "__main__":
    sys.exit(main(["synthesize", *sys.argv[1:]]))
