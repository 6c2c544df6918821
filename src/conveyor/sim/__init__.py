"""``conveyor simulate``: the engine's pure core (frontier, admission, fair share) driven on a
simulated clock with each task's expected duration (docs/simulate.md)."""

from conveyor.sim.loop import Batch, SimConfig, SimResult, SimulationStuck, simulate

__all__ = ["Batch", "SimConfig", "SimResult", "SimulationStuck", "simulate"]
