"""``python -m smime_milter.cli``: the same as the ``smime-milter`` command."""

import sys

from smime_milter.cli.main import main

sys.exit(main())
