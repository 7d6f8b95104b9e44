"""The typed face of pymilter, whose ``Milter`` package has no type information.

Only what :mod:`smime_milter.mta.app` uses: the callback return codes, the
``noreply`` and ``decode`` method decorators and the ``Milter.Base`` actions it
calls. At run time every name here is pymilter's own object (the decorators
are called unchanged); the declarations only tell the type checker what
pymilter's documentation says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import Milter

#: Callback return codes (``SMFIS_*``).
CONTINUE: int = Milter.CONTINUE
REJECT: int = Milter.REJECT
TEMPFAIL: int = Milter.TEMPFAIL

Callback = TypeVar("Callback", bound=Callable[..., int])


def noreply(callback: Callback) -> Callback:
    """``@Milter.noreply``: the MTA need not wait for this callback's answer
    (which must be CONTINUE)."""
    wrapped: Callback = Milter.noreply(callback)
    return wrapped


def decode(strategy: str) -> Callable[[Callback], Callback]:
    """``@Milter.decode(strategy)``: how the callback's bytes become text
    (``"bytes"``: they are passed undecoded)."""
    set_strategy: Callable[[Callback], Callback] = Milter.decode(strategy)
    return set_strategy


if TYPE_CHECKING:

    class Base:
        """``Milter.Base``: the actions a callback may take. Each raises
        ``milter.error`` when libmilter refuses and ``Milter.DisabledAction``
        when the action was not negotiated."""

        def getsymval(self, sym: str) -> str | None: ...
        def setreply(self, rcode: str, xcode: str | None = None,
                     msg: str | None = None, *ml: str) -> None: ...
        def addheader(self, field: str, value: str, idx: int = -1) -> None: ...
        def chgheader(self, field: str, idx: int, value: str) -> None: ...
        def addrcpt(self, rcpt: str, params: str | None = None) -> None: ...
        def delrcpt(self, rcpt: str) -> None: ...
        def replacebody(self, body: bytes) -> None: ...
        def quarantine(self, reason: str) -> None: ...

else:
    Base = Milter.Base
