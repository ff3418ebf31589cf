"""The seed README's `scripts/train_nifi.py`: same flags, runs `nifi train`."""
import sys

from nifi_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
