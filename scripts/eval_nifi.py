"""The seed README's `scripts/eval_nifi.py`: same flags, runs `nifi eval`."""
import sys

from nifi_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
