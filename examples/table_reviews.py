"""A synthetic product-review table, built without any network.

    conveyor build examples/table_reviews.py --plan
    conveyor build examples/table_reviews.py --records 5000 --out /tmp/reviews

Three sampled seed columns, three cell columns (one call per row: they read other columns of
the same row by naming them as parameters), one ``full_column`` generator (one call per row
group, on the kept rows' slices) and a filter (``DropRow``). Every random draw comes from the
table's seed (samplers) or the ``rng`` each cell is given (seeded from the seed, the column and
the row), so a build, an interrupted build resumed, and a rebuild all write the same rows.
"""

import conveyor

table = conveyor.Table("reviews", row_group_size=1000, seed=7)

# Seed columns: reproducible from the seed and the row index.
table.sampler("product", conveyor.category({"book": 5, "lamp": 2, "kettle": 2, "chair": 1}))
table.sampler("stars", conveyor.integers(1, 5))
table.sampler("price", conveyor.uniform(5.0, 120.0))

OPINIONS = {
    1: ["broke in a week", "not worth it"],
    2: ["disappointing", "does the job, barely"],
    3: ["fine for the price", "nothing special"],
    4: ["solid", "would buy again"],
    5: ["excellent", "the best I have owned"],
}


@table.column
def sentiment(stars):
    return "positive" if stars >= 4 else "negative" if stars <= 2 else "neutral"


@table.column
def title(product, sentiment, rng):
    adjective = {"positive": "Great", "negative": "Poor", "neutral": "Okay"}[sentiment]
    return f"{adjective} {product}" + ("!" if rng.random() < 0.3 else "")


@table.column
def review(title, product, stars, price, rng):
    if stars == 1 and price < 20:  # a filter: this row is left out, counted by reason
        raise conveyor.DropRow("cheap and one star")
    opinion = OPINIONS[stars][int(rng.random() * len(OPINIONS[stars]))]
    return f"{title} - paid ${price:.2f} for this {product}, {opinion}."


@table.column(strategy="full_column")
def length_rank(review):
    """Each review's length rank within its row group (0 = shortest): a whole-column step."""
    order = sorted(range(len(review)), key=lambda i: (len(review[i]), i))
    rank = [0] * len(review)
    for position, i in enumerate(order):
        rank[i] = position
    return rank
