"""`transform` stage: see `av_grounding.cli` and `python stages/transform.py --help`."""

import sys

from av_grounding.cli import main

if __name__ == "__main__":
    sys.exit(main(["transform", *sys.argv[1:]]))
