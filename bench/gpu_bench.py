"""``python -m bench.gpu_bench``: the NiFi GPU benchmark (same as ``nifi bench``; see nifi_lib/bench/gpu.py
and docs/performance.md)."""
import sys

from nifi_lib.bench.gpu import main

if __name__ == "__main__":
    sys.exit(main())
