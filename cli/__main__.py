"""`python -m genqueue.cli`: the same as the `genqueue` command."""

from genqueue.cli.app import main

main()
