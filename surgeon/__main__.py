"""`python -m surgeon`: the same as the `surgeon` command."""

from surgeon.cli.main import main

main()
