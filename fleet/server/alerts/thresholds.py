"""Alert thresholds per hardware model: a terminal's `model` (its DB row) names a file in
firmware_configs/, whose paper and toner thresholds replace the fleet's defaults for it.

Model ids are matched without regard to case (`fleet terminals add --model KX-A4-IPP` is the
model `kx-a4-ipp`); a terminal of an unknown model (or `unknown`, auto-registered) keeps the
defaults, which come from the server settings (`paper_low_pct`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from fleet.firmware import HardwareModel
from fleet.server.alerts.rules import Thresholds


def model_thresholds(model: HardwareModel, default: Thresholds) -> Thresholds:
    """`default` with what the model states (paper low and clear margin, toner low)."""
    t = replace(default, paper_low_pct=float(model.paper_low_pct))
    if model.paper_clear_margin_pct is not None:
        t = replace(t, paper_clear_margin_pct=float(model.paper_clear_margin_pct))
    if model.toner_low_pct is not None:
        t = replace(t, toner_low_pct=float(model.toner_low_pct))
    return t


class ThresholdsByModel:
    """Thresholds for a terminal's model id, worked out once per model at start."""

    def __init__(self, models: Mapping[str, HardwareModel], default: Thresholds) -> None:
        self.default = default
        self._by_id = {mid.lower(): model_thresholds(m, default) for mid, m in models.items()}

    def thresholds_for(self, model_id: str | None) -> Thresholds:
        if not model_id:
            return self.default
        return self._by_id.get(model_id.strip().lower(), self.default)
