"""`python -m dtensor_verify ...` is the `dtensor-verify` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
