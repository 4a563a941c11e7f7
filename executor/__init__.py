"""stashflow's executor: the container command of stashflow's own database Functions.

It streams a dump tool into ``restic backup --stdin`` (and ``restic dump`` into a restore tool)
through a pipe between the two processes, with no shell and no copy of the dump on disk, and
reports the component's result on the termination message in the Snapshot's vocabulary.

Standard library only, and independent of the other stashflow packages: it runs inside the
Function's image, where only Python, restic and the database client are installed.
"""
