"""A 10,000-row synthetic review dataset with three LLM columns, against a local fake server.

    python -m conveyor.testing.fake_llm --port 8000 --latency-ms 200 --capacity 64 &
    export FAKE_LLM_KEY=sk-local                     # any value: the fake server checks none
    conveyor build examples/table_llm.py --preview 5                      # 5 rows, nothing written
    conveyor build examples/table_llm.py --records 10000 --out /tmp/llm-reviews

Two sampled seed columns, three LLM columns (two text, one structured and validated against a
pydantic model), one ``full_column`` generator (one call per row group) and a filter
(``keep_when`` drops the rows the judge scores below 2). The prompts are Jinja templates; their
variables are the columns they read, so no ``deps=`` is needed. The models (``writer`` and
``judge``) come from ``llm_models.yaml``; ``--models other.yaml`` points the same spec at
another endpoint. Nobody tells conveyor the endpoint's capacity: the adaptive limiter finds it.
"""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

import conveyor

table = conveyor.Table("llm_reviews", row_group_size=1000, seed=11)
table.models_from(Path(__file__).with_name("llm_models.yaml"))

table.sampler("product", conveyor.category({"kettle": 3, "desk lamp": 2, "backpack": 2,
                                            "headphones": 3}))  # fmt: skip
table.sampler("persona", conveyor.category({"student": 2, "parent": 2, "retiree": 1,
                                            "engineer": 1}))  # fmt: skip


class Verdict(BaseModel):
    score: int = Field(ge=1, le=5)
    sentiment: Literal["positive", "neutral", "negative"]
    helpful: bool


table.add(conveyor.llm_text("Write a product title for a {{ product }} sold online.",
                            model="writer"), name="title")  # fmt: skip
table.add(
    conveyor.llm_text(
        "You are a {{ persona }}. Review the {{ product }} called '{{ title }}' in three"
        " sentences.",
        model="writer",
    ),
    name="review",
)
table.add(
    conveyor.llm_structured("Grade this review of a {{ product }}:\n{{ review }}",
                            schema=Verdict, model="judge"),
    name="verdict",
    keep_when=lambda v: v["score"] >= 2,  # a filter: lower scores drop the row
)  # fmt: skip


@table.column(strategy="full_column")
def length_rank(review):
    """Each review's length rank within its row group (0 = shortest): one call per group."""
    order = sorted(range(len(review)), key=lambda i: len(review[i]))
    rank = [0] * len(review)
    for r, i in enumerate(order):
        rank[i] = r
    return rank
