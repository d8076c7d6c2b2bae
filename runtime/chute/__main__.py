"""``python -m chute``: the same command line as the ``chute`` script."""

from .cli import main

main(prog_name="chute")
