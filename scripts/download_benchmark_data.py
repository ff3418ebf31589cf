"""The seed README's `scripts/download_benchmark_data.py`: same flags, runs `nifi download`."""
import sys

from nifi_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["download", *sys.argv[1:]]))
