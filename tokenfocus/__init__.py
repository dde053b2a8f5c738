"""TokenFocus: first-token VQA scoring of text-to-image alignment with LVLMs."""

from typing import TYPE_CHECKING

__all__ = ["Scorer"]
__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tokenfocus.scoring import Scorer


def __getattr__(name: str):
    # Lazy so that `import tokenfocus` stays cheap and free of side effects (no torch import).
    if name == "Scorer":
        import sys

        if "torch" not in sys.modules:  # the kernels' dispatch is read once, when torch loads
            from tokenfocus.env import apply_cpu_kernel_env

            apply_cpu_kernel_env()
        from tokenfocus.scoring import Scorer

        return Scorer
    raise AttributeError(name)
