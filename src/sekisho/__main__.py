"""`python -m sekisho` runs the same command line as `sekisho`."""

from sekisho.cli import main

raise SystemExit(main())
