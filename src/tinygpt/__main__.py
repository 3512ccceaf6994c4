"""`python -m tinygpt <command> ...`: the same programs as the `tinygpt` console script."""
import sys

from .cli import main

sys.exit(main())
