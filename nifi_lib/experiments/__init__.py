"""Experiments: what the notebooks and ``make run`` orchestrate on top of the library, above evaluation.

- :mod:`.embedded`: the embedded default end to end (``ensure_*``: pairs, trained runs, Table 1 methods).
- :mod:`.ablations`: Sec. 4.2 sweeps (t0 sweep, alpha sweep that trains one phi- per alpha, HF energy).
- :mod:`.latent_checks`, :mod:`.toy_checks`, :mod:`.table1`: what notebooks 02-03, 04 and 06 measure on top
  of library results (VAE round trip and Eq. 7 traces; the toy checks per sigma; benchmark summaries).
- :mod:`.report`: the key numbers notebooks record for the run report.
- :mod:`.notebook_runner`: ``nifi run-notebooks`` (papermill; ``make run`` / ``make test``).
- :mod:`.rehearse`: ``nifi rehearse`` (the paper path end to end on a random-weight SD3).
"""
