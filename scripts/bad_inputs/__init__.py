"""CLI cases of `scripts/check_bad_inputs.py`, one module per kind of fault (images, cli, runs).

Each module defines `CASES: list[Case]`. A case builds its inputs in a fresh folder of its own (tiny
generated images, no real faces), runs `idfer` once (or a few times: `before` runs first and must succeed),
and says what a clear answer contains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Case:
    """One bad input or fault, as a user would meet it on the command line.

    `argv(ctx)` returns the `idfer` arguments (without `idfer`), building whatever files it needs under
    `ctx.tmp`. `expect` is a fragment (case-insensitive) that the one-line error must contain; a case whose
    right answer is success (e.g. an accepted resume) sets `exit_code=0` and checks the outcome in `check`.
    `check(ctx, proc) -> str | None` returns a problem (the verdict becomes 'silent') or None.
    """

    name: str
    argv: Callable[[Any], list[str]]
    expect: str = ""
    exit_code: int = 1
    before: Callable[[Any], list[list[str]]] | None = None  # runs that must succeed first
    check: Callable[[Any, Any], str | None] | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    stdin: str | None = None
    signal_after: float | None = None  # seconds: send SIGINT (Ctrl-C) then, instead of waiting
