"""Benchmarks: analytic FLOP counts (:mod:`.flops`) and the GPU benchmark (:mod:`.gpu`, ``nifi bench``)."""
