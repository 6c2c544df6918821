"""Data Designer's side of ``bench_llm.py``: one ``create()`` run, configured as its users do.

Run by ``bench_llm.py`` with the Python of Data Designer's own venv (it is not a dependency of
conveyor), as ``python peer_datadesigner.py CONFIG.json``; prints one JSON line with the timed
window. Written from Data Designer's documented API only (its README's quick start and the
``ModelProvider`` / ``ModelConfig`` / ``ChatCompletionInferenceParams`` reference): a provider
per fake server, a model alias per endpoint, a category sampler and two chained
``LLMTextColumnConfig`` columns. Everything else is its default: ``RunConfig()`` (row groups of
``buffer_size`` 1,000, 3 in flight), the readiness check of each model before generation, the
column statistics computed after it, and ``max_parallel_requests`` unless the scenario tells it a
number.

The config (JSON): ``records``, ``out`` (the artifact path, a fresh directory), ``dataset``
(its name), ``models``: ``[{"alias", "model", "url", "max_parallel_requests" (null: its
default)}]``, ``columns``: ``[{"name", "prompt", "model"}]`` (LLM text columns, in order) and
``categories`` (the sampler's values).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        cfg: dict[str, Any] = json.load(f)
    # what Data Designer imports lazily, imported before the timed window (as bench_llm.py
    # does for conveyor's lazy imports)
    import data_designer.config as dd
    import httpx  # noqa: F401
    import networkx  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    from data_designer.interface import DataDesigner

    providers = []
    models = []
    for m in cfg["models"]:
        providers.append(
            dd.ModelProvider(name=f"{m['alias']}-server", endpoint=m["url"], api_key="unused")
        )
        params = dd.ChatCompletionInferenceParams()
        if m["max_parallel_requests"] is not None:
            params = dd.ChatCompletionInferenceParams(
                max_parallel_requests=m["max_parallel_requests"]
            )
        models.append(
            dd.ModelConfig(
                alias=m["alias"],
                model=m["model"],
                provider=f"{m['alias']}-server",
                inference_parameters=params,
            )
        )
    builder = dd.DataDesignerConfigBuilder(model_configs=models)
    builder.add_column(
        dd.SamplerColumnConfig(
            name="category",
            sampler_type=dd.SamplerType.CATEGORY,
            params=dd.CategorySamplerParams(values=list(cfg["categories"])),
        )
    )
    for col in cfg["columns"]:
        builder.add_column(
            dd.LLMTextColumnConfig(name=col["name"], model_alias=col["model"], prompt=col["prompt"])
        )
    designer = DataDesigner(artifact_path=cfg["out"], model_providers=providers)
    defaults = designer.run_config
    parallel = {m.alias: m.inference_parameters.max_parallel_requests for m in models}

    started = time.time()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    result = designer.create(builder, num_records=cfg["records"], dataset_name=cfg["dataset"])
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)

    rows = len(result.load_dataset())  # after the window
    print(
        "RESULT "
        + json.dumps(
            {
                "started": started,
                "wall_s": wall,
                "cpu_s": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime,
                "rows": rows,
                "row_group_size": defaults.buffer_size,
                "row_groups_in_flight": defaults.max_concurrent_row_groups,
                "max_parallel_requests": parallel,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1])
