"""The edges: the engine loop, executors, worker processes, clocks."""
