"""`rl` stage: see `av_grounding.cli` and `python stages/rl.py --help`."""

import sys

from av_grounding.cli import main

if __name__ == "__main__":
    sys.exit(main(["rl", *sys.argv[1:]]))
