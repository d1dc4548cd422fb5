"""Lets ``python -m contractssm`` run the command line."""

import sys

from contractssm.cli import main

if __name__ == "__main__":
    sys.exit(main())
