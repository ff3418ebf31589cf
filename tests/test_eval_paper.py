"""Table 1 as data: every number checked against the paper digest (shared/PAPER.md), and the look-ups."""
from __future__ import annotations

import re

import pytest

from nifi_lib.evaluation import paper
from nifi_lib.paths import REPO_ROOT

PAPER_MD = REPO_ROOT.parent / "shared" / "PAPER.md"


def _parse_table1():
    if not PAPER_MD.is_file():
        pytest.skip(f"{PAPER_MD} absent")
    rows = {}
    for line in PAPER_MD.read_text().splitlines():
        if not line.startswith("|") or "---" in line:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("method",):
            rows[cells[0]] = cells[1:]
    return rows


def test_table1_matches_paper_digest():
    rows = _parse_table1()
    pair = re.compile(r"([0-9.]+)/([0-9.]+)")
    n = 0
    for key, title in paper.METHOD_ROWS.items():
        assert title in rows, f"row {title} not in PAPER.md"
        for ds, cell in zip(paper.DATASETS, rows[title]):
            got = [(float(a), float(b)) for a, b in pair.findall(cell)]
            assert len(got) == 3
            for rate, (lp, di) in zip(paper.RATES, got):
                assert paper.TABLE1[key][ds][rate] == {"lpips": lp, "dists": di}
                n += 1
    assert n == 8 * 3 * 3
    sizes = rows["size (MB)"]
    for ds, cell in zip(paper.DATASETS, sizes):
        assert [paper.SIZES_MB[ds][r] for r in paper.RATES] == [float(v) for v in cell.split(",")]
    unc_title = next(k for k in rows if k.startswith("3DGS-30K"))
    mb = [float(v) for v in re.findall(r"([0-9.]+)", unc_title.split(";")[1])]
    for ds, cell, size in zip(paper.DATASETS, rows[unc_title], mb):
        lp, di = map(float, cell.split("/"))
        assert paper.UNCOMPRESSED_3DGS[ds] == {"size_mb": size, "lpips": lp, "dists": di}


def test_lookups():
    assert paper.lookup("nifi", "DeepBlending", "rate_0.1") == {"lpips": 0.133, "dists": 0.101, "size_mb": 0.599}
    assert paper.lookup("none", "tandt", 1) == {"lpips": 0.364, "dists": 0.193, "size_mb": 0.230}
    assert paper.lookup("+ NiFi w/o t0", "mip-nerf360", "0.50") == {"lpips": 0.287, "dists": 0.174, "size_mb": 0.357}
    assert paper.lookup("ffdnet", "mipnerf360", "0.1") is None          # not a Table 1 row
    assert paper.lookup("nifi", "embedded", "0.1") is None              # not a Table 1 dataset
    assert paper.lookup("nifi", "mipnerf360", "0.25") is None           # not a Table 1 rate
    assert paper.canonical_method("HAC++") == "hacpp" and paper.canonical_method("Img2Img (SD3)") == "img2img"
    assert len(list(paper.table_rows())) == 72
    # the headline: NiFi on DeepBlending at 0.599 MB is close to uncompressed 3DGS (555 MB), ~927x smaller
    assert paper.UNCOMPRESSED_3DGS["deepblending"]["size_mb"] / paper.SIZES_MB["deepblending"]["0.1"] == \
        pytest.approx(926.5, abs=1)
    # NiFi beats every other method in LPIPS at every point of the table
    for ds in paper.DATASETS:
        for r in paper.RATES:
            others = [paper.TABLE1[m][ds][r]["lpips"] for m in paper.METHODS if m != "nifi"]
            assert paper.TABLE1["nifi"][ds][r]["lpips"] < min(others)
