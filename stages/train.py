"""`train` stage: see `av_grounding.cli` and `python stages/train.py --help`."""

import sys

from av_grounding.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
