"""`python -m nin_bench ...`: the command line (see `nin_bench.cli`)."""
from nin_bench.cli import main

raise SystemExit(main())
