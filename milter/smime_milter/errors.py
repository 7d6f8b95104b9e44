"""The root of the project's expected failures.

Every exception this package raises on purpose (bad input, bad
configuration, an unusable key, a store or MTA that refuses) derives from
:class:`SmimeMilterError`, so a caller can tell "the input or the setup is
wrong" (one line for an admin) from a bug (a traceback). Several still also
derive from ValueError or RuntimeError, as they did before the root existed,
because callers catch them under those names.
"""

from __future__ import annotations

__all__ = ["SmimeMilterError"]


class SmimeMilterError(Exception):
    """An expected failure whose message is written for an admin or a client."""
