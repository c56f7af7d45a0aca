"""`validate` stage: see `av_grounding.cli` and `python stages/validate.py --help`."""

import sys

from av_grounding.cli import main

if __name__ == "__main__":
    sys.exit(main(["validate", *sys.argv[1:]]))
