"""`python -m softprompt.cli`: the same as the `softprompt` console script."""

from . import main

main()
