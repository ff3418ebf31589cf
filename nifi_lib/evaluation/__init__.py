"""Evaluation (paper Sec. 4.2, Table 1): baselines, benchmark, Table 1 as data (the metrics and their weights
live one layer below, in :mod:`nifi_lib.metrics`).

- :mod:`.paper`: Table 1 as data.
- :mod:`.baselines`: ``RestorationMethod`` and the registry (none, bm3d, ffdnet, precomputed, img2img,
  nifi, nifi_wo_t0).
- :mod:`.evaluate` / :mod:`.benchmark`: ``nifi eval`` and ``nifi benchmark``.
- :mod:`.guidance`, :mod:`.rate`, :mod:`.outputs`: the CFG probe, rate measurements, the saved outputs.
"""
