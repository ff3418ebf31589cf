"""The seed README's `scripts/eval_benchmark_nifi.py`: same flags, runs `nifi benchmark`."""
import sys

from nifi_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
