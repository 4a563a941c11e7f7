"""``python -m stashflow.executor`` (and the zipapp's entry point)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
