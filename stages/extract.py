"""`extract` stage: see `av_grounding.cli` and `python stages/extract.py --help`."""

import sys

from av_grounding.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
