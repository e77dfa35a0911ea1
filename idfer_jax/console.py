"""What a run says to the person running it, from any layer (data preparation, recipes, training)."""

from __future__ import annotations


def announce(message: str) -> None:
    """Prints a progress message once per run: on process 0 of a multi-host system."""
    import jax  # only when there is something to say: importing this module stays free

    if jax.process_index() == 0:
        print(message, flush=True)
