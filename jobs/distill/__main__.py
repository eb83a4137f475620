"""``python -m jobs.distill``: the same :func:`jobs.distill.cli.main` as ``ultrastyle distill``."""

import sys

from jobs.distill.cli import main

sys.exit(main())
