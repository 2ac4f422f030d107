"""`python -m service` is the same CLI as the `logikids-sync` script."""

from service.cli import main

raise SystemExit(main())
