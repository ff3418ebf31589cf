"""The seed README's `scripts/build_3dgs_and_compress.py`: same flags, runs `nifi synthesize`."""
import sys

from nifi_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["synthesize", *sys.argv[1:]]))
