"""The version of trustp2p, apart so that any module can import it without a cycle."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
