"""Clameur's benchmarks: intake, tally, notify and the whole pipeline on one machine.

Each bench starts what it measures (on free loopback ports, with its own topics and
database), loads it for a bounded time or count, checks that nothing was lost or
counted twice (exit status 1 otherwise), and rewrites its own section of
``docs/benchmarks.md``.  See ``python -m bench.<name> --help``.
"""
