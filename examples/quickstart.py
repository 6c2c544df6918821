"""The Python API in one screen: run with `python examples/quickstart.py`."""

import conveyor


@conveyor.task
def square(x: int) -> int:
    return x * x


@conveyor.task(retries=2)
def total(*parts: int) -> int:
    return sum(parts)


with conveyor.Graph("quickstart") as g:
    parts = [square(i) for i in range(10)]
    answer = total(*parts)  # depends on every square; receives their results

for result in conveyor.run_iter(g, workers=4):  # results arrive as each task finishes
    print(f"{result.id:>10} -> {result.value}")

print("total:", conveyor.run(g)[answer.id])
