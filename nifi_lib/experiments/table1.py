"""Notebook 06's summaries of a benchmark result (Sec. 4.2, Table 1): the rate-perception rows (measured
sizes, compression against the dense PLY, the bytes the unrestored codec needs for NiFi's LPIPS) and the
count of Table 1's orderings that hold (:func:`nifi_lib.evaluation.benchmark.table1_orderings`)."""
from __future__ import annotations

from ..evaluation.rate import equal_quality_ratio


def evaluated_sizes(sizes_mb: dict[str, float], per_rate: dict) -> dict[str, float]:
    """``sizes_mb`` (:func:`~nifi_lib.evaluation.rate.level_sizes_mb`) restricted to the rates that ``per_rate``
    (one dataset of a benchmark's ``per_dataset_rate``) evaluated."""
    return {r: mb for r, mb in sizes_mb.items() if r in per_rate}


def rate_perception_rows(sizes_mb: dict[str, float], per_rate: dict, uncompressed: dict | None) -> list[dict]:
    """Per evaluated rate with a NiFi result (rates in label order): ``kb``, ``x_smaller`` (than the dense PLY,
    ``uncompressed["mb"]``; None without a dense reference), LPIPS/DISTS of the compressed input (``*_before``) and after NiFi (``*_nifi``), and
    ``equal_quality_ratio``: how many times the bytes the unrestored codec's curve needs to reach NiFi's LPIPS
    (None when it never does)."""
    rates = sorted(sizes_mb)
    curve = [sizes_mb[r] for r in rates], [per_rate[r]["none"]["lpips_before"] for r in rates]
    rows = []
    for r in rates:
        if "nifi" not in per_rate[r]:
            continue
        none, nifi = per_rate[r]["none"], per_rate[r]["nifi"]
        rows.append({"rate": r, "kb": sizes_mb[r] * 1000,
                     "x_smaller": uncompressed["mb"] / sizes_mb[r] if uncompressed else None,
                     "lpips_before": none["lpips_before"], "lpips_nifi": nifi["lpips_after"],
                     # None where DISTS was not scored (a machine without its VGG16 trunk)
                     "dists_before": none.get("dists_before"), "dists_nifi": nifi.get("dists_after"),
                     "equal_quality_ratio": equal_quality_ratio(sizes_mb[r], nifi["lpips_after"], *curve)})
    return rows


NUMBER_KEYS = ("kb", "lpips_before", "lpips_nifi", "dists_before", "dists_nifi")


def rate_perception_numbers(rows: list[dict], uncompressed: dict | None) -> dict:
    """The run report's numbers of :func:`rate_perception_rows`: the dense reference (None when there is
    none) and ``rate_<label>``."""
    unc = uncompressed or {}
    return {"uncompressed_mb": unc.get("mb"), "uncompressed_lpips": unc.get("lpips"),
            **{f"rate_{row['rate']}": {k: row[k] for k in NUMBER_KEYS} for row in rows}}


def orderings_summary(orderings: list[dict]) -> dict:
    """``orderings_holding`` ("held/total") and ``orderings_failing`` (the failing orderings) of
    :func:`~nifi_lib.evaluation.benchmark.table1_orderings`."""
    return {"orderings_holding": f"{sum(o['holds'] for o in orderings)}/{len(orderings)}",
            "orderings_failing": [o for o in orderings if not o["holds"]]}


__all__ = ["evaluated_sizes", "rate_perception_rows", "rate_perception_numbers", "orderings_summary"]
