"""The package's own messages: printed on the main process only, whatever level Lightning's loggers are set to
(the CLI hides Lightning's info notices, not these)."""

from __future__ import annotations

from pytorch_lightning.utilities.rank_zero import rank_zero_only

__all__ = ["say"]


@rank_zero_only
def say(message: str) -> None:
    """Print ``message`` once, on the process of global rank 0."""
    print(message, flush=True)
