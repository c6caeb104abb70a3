"""``python -m textgym ...``: the ``textgym`` command, also as launchers run it (``torchrun -m textgym train ...``)."""

from __future__ import annotations

import sys

from textgym.cli import main

sys.exit(main())
