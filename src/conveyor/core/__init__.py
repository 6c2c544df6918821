"""The pure kernel: readiness, ordering, retry schedules, graph facts.

Nothing here touches threads, clocks, sockets or databases: functions and small classes take
state and ``now`` and return decisions. ``tests/test_core_purity.py`` checks the imports.
"""
