"""Bad-input cases of kind 'cli' (commands, configs, overrides) for scripts/check_bad_inputs.py."""

from __future__ import annotations

from scripts.bad_inputs import Case

CASES: list[Case] = [
    Case("config file that does not exist",
         lambda ctx: ["train", "--config=configs/nosuch.py", f"--workdir={ctx.tmp / 'run'}"],
         expect="does not exist"),
]
