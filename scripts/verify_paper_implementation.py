"""The seed README's `scripts/verify_paper_implementation.py`: same flags, runs `nifi verify`."""
import sys

from nifi_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["verify", *sys.argv[1:]]))
