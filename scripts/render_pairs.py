"""The seed README's `scripts/render_pairs.py`: same flags, runs `nifi pairs`."""
import sys

from nifi_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["pairs", *sys.argv[1:]]))
