"""The seed README's `scripts/prepare_benchmark_pairs.py`: same flags, runs `nifi prepare-benchmark`."""
import sys

from nifi_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare-benchmark", *sys.argv[1:]]))
