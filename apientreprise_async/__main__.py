"""``python -m apientreprise_async``: the same as the ``apientreprise`` command."""

from ._cli import main

raise SystemExit(main())
