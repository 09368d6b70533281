"""`python -m modeldeploy` is the same as the `modeldeploy` console script."""

from modeldeploy.cli import main

raise SystemExit(main())
