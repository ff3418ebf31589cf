"""Library messages that are known to be harmless in this project, silenced precisely (nothing else is).

Two messages used to fill the executed notebooks (~80 copies per ``make run``):

- diffusers (``diffusers.models.modeling_utils``, through diffusers' *logger*, not :mod:`warnings`):
  "There are modules in <Model> that should be kept in float32: []. Casting directly with `to()` ...".
  ``ModelMixin.to`` logs it whenever ``dtype=`` is passed (even ``dtype=None``), also when the model's
  ``_keep_in_fp32_modules`` is empty (``[]``), as for ``AutoencoderKL`` and ``SD3Transformer2DModel``.
  With an empty list nothing is kept in float32, so the cast cannot be inconsistent: only that form is
  dropped; a non-empty list (a model that really has float32 modules) is still shown.
- peft (``peft.tuners.tuners_utils``, a ``UserWarning``): "Already found a `peft_config` attribute in the
  model. This will lead to having multiple adapters ...". The restorer deliberately puts two named
  adapters (phi- and the critic phi+) on one transformer (:mod:`nifi_lib.restoration.lora`); this is the
  documented way to do so. (``pyproject.toml`` filters the same warning for pytest.)

:func:`install_known_harmless_filters` is idempotent; :func:`nifi_lib.viz.style.apply_style` calls it, so
every notebook's kernel has it. Library entry points can call it too.
"""
from __future__ import annotations

import logging
import re
import warnings

DIFFUSERS_LOGGER = "diffusers.models.modeling_utils"
# the exact diffusers message with an empty module list (nothing is kept in float32: the cast is exact)
DIFFUSERS_FP32_EMPTY = re.compile(r"^There are modules in \w+ that should be kept in float32: \[\]\.")
PEFT_MULTI_ADAPTER = r"Already found a `peft_config` attribute in the model"


class _DropEmptyFp32Notice(logging.Filter):
    """Drops diffusers' "should be kept in float32: []" notice; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not DIFFUSERS_FP32_EMPTY.match(msg)


def is_known_harmless(message: str) -> bool:
    """True for the exact messages this module silences (for tests and log scanners)."""
    return bool(DIFFUSERS_FP32_EMPTY.match(message)) or message.startswith(PEFT_MULTI_ADAPTER)


def install_known_harmless_filters() -> None:
    """Silence the two known-harmless messages above (idempotent; touches no other warning or logger)."""
    log = logging.getLogger(DIFFUSERS_LOGGER)
    if not any(isinstance(f, _DropEmptyFp32Notice) for f in log.filters):
        log.addFilter(_DropEmptyFp32Notice())
    # `message` is a regex matched at the start of the warning text; skip when the same filter is already
    # installed so that repeated calls do not grow warnings.filters.
    pattern = re.escape(PEFT_MULTI_ADAPTER)
    if not any(f[0] == "ignore" and f[2] is UserWarning and getattr(f[1], "pattern", None) == pattern
               for f in warnings.filters):
        warnings.filterwarnings("ignore", message=pattern, category=UserWarning)


__all__ = ["install_known_harmless_filters", "is_known_harmless", "DIFFUSERS_LOGGER", "PEFT_MULTI_ADAPTER"]
