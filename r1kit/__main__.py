"""`python -m r1kit STAGE ...`: the same as the `r1kit` command (`r1kit.cli`)."""

from r1kit.cli import main

raise SystemExit(main())
