"""`python -m kvgpt ...`: the same command line as the `kvgpt` script (see kvgpt/cli.py)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
