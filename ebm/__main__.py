"""`python -m ebm`: the command line of `ebm.cli`."""

from .cli import main

main()
