"""``smime-milter`` at a pretend moment, in a separate process, for tests.

``python -m tests.support.clockedcli MOMENT COMMAND...`` runs the command
with ``main``'s clock hook fixed at the ISO 8601 ``MOMENT``. The command
itself has no such option, so that a pretend moment never reaches a live
store (issue 16); this module is not shipped.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime

from smime_milter.cli.common import parse_moment
from smime_milter.cli.main import main


def fixed(moment: datetime) -> Callable[[], datetime]:
    """A clock that always says ``moment``."""
    return lambda: moment


def clocked_command(moment: datetime, *argv: str) -> list[str]:
    """The argv of a process running ``smime-milter argv...`` at ``moment``."""
    return [sys.executable, "-m", "tests.support.clockedcli", moment.isoformat(), *argv]


if __name__ == "__main__":
    sys.exit(main(sys.argv[2:], clock=fixed(parse_moment(sys.argv[1]))))
