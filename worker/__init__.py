"""The stashflow worker: many flow runs of a work pool at once, in one process (see worker.py)."""
