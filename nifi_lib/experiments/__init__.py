"""Experiments: what the notebooks and ``make run`` orchestrate on top of the library, above evaluation.

- :mod:`.embedded`: the embedded default end to end (``ensure_*``: pairs, trained runs, Table 1 methods).
- :mod:`.ablations`: Sec. 4.2 sweeps (t0 sweep, alpha sweep that trains one phi- per alpha, HF energy).
- :mod:`.report`: the key numbers notebooks record for the run report.
- :mod:`.notebook_runner`: ``nifi run-notebooks`` (papermill; ``make run`` / ``make test``).
- :mod:`.rehearse`: ``nifi rehearse`` (the paper path end to end on a random-weight SD3).
"""
