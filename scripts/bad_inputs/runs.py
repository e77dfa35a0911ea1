"""Bad-input cases of kind 'runs' for scripts/check_bad_inputs.py."""

from __future__ import annotations

from scripts.bad_inputs import Case

CASES: list[Case] = []
