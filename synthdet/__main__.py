"""`python -m synthdet ...`: the same command line as `synthdet ...`."""

from synthdet.cli import main

main()
