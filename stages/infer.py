"""`infer` stage: see `av_grounding.cli` and `python stages/infer.py --help`."""

import sys

from av_grounding.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
