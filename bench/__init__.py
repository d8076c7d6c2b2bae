"""chute against the tools users would pick instead: ``python -m bench``."""
