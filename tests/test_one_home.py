"""One home per paper equation (issue 14): Eq. 7 is computed by one function, which every caller reaches.

The independent re-implementation of the authors' inference (``restoration/reference.py``) stays
independent on purpose; everything else goes through ``restoration.restorer.restore_latents``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from helpers import lib_call_sites as _calls, randomize_lora, tiny_backbone
from nifi_lib.restoration.lora import RESTORER, add_restorer_adapters

LIB = Path(__file__).resolve().parents[1] / "nifi_lib"


def test_eq7_step_and_projection_have_one_call_site():
    # the one-step update and the Eq. 2 projection to t0 are each called from the one Eq. 7 function only
    assert _calls("one_step_restore") == {"restoration/restorer.py": 1}
    assert _calls("project_to_t0") == {"restoration/restorer.py": 1}
    # and that function is what the restorer (restore, trace), the trainer and the bench call
    sites = _calls("restore_latents")
    assert sites.get("restoration/restorer.py") == 2 and sites.get("training/trainer.py") == 1 \
        and sites.get("bench/gpu.py") == 1, sites


def test_restore_and_trace_go_through_restore_latents(monkeypatch):
    import nifi_lib.restoration.restorer as R

    bb = tiny_backbone()
    add_restorer_adapters(bb, rank=4, alpha=4)
    randomize_lora(bb.transformer, RESTORER, seed=1)
    calls = []
    real = R.restore_latents

    def spy(*a, **k):
        out = real(*a, **k)
        calls.append(out.x_hat)
        return out

    monkeypatch.setattr(R, "restore_latents", spy)
    r = R.Restorer(bb, t0=199)
    img = torch.rand(1, 3, 32, 32) * 2 - 1
    out = r.restore(img, seed=3)
    tr = r.trace(img, seed=3)
    assert len(calls) == 2 and torch.equal(calls[0], calls[1])
    assert torch.allclose(out, tr["restored"], atol=1e-6)
    # the decoded x^ of trace is the image restore returns; x^ differs from the un-restored latent
    assert not torch.allclose(tr["x_hat"], tr["latents"])


def test_one_default_device(monkeypatch):
    """"CUDA when available, else the CPU" is decided in nifi_lib/devices.py alone; every caller asks it."""
    from nifi_lib.devices import default_device

    import re

    rule = re.compile(r'cuda\.is_available\(\)[^\n#]*else\s*"cpu"')    # the decision itself, not other checks
    deciding = [str(f.relative_to(LIB)) for f in LIB.rglob("*.py") if rule.search(f.read_text())]
    assert deciding == ["devices.py"], deciding
    assert default_device("cuda:1") == "cuda:1" and default_device(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == default_device("auto") == default_device("") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device(None) == "cpu"
