"""kernelsup: an Erlang-style supervision tree for Jupyter kernels, on trio."""

from __future__ import annotations

__version__ = "0.1.0"
