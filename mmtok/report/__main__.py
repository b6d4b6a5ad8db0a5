"""`python -m mmtok.report ...` (see `mmtok.report.cli`)."""

import sys

from mmtok.report.cli import main

sys.exit(main())
