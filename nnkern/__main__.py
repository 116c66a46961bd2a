"""``python -m nnkern train ...`` / ``python -m nnkern bench ...`` (see nnkern.cli)."""

from nnkern.cli import main

raise SystemExit(main())
