"""How task resources and labels become Ray options, and what a Ray cluster offers (pure)."""

from __future__ import annotations

from conveyor.core.raymap import cluster_offer, node_shortfall, ray_options


def test_ray_options_map_each_resource_to_its_ray_option() -> None:
    got = ray_options({"cpu": 2, "gpu": 0.5, "memory": 2e9, "slot": 1, "unused": 0}, {})
    assert got == {"num_cpus": 2.0, "num_gpus": 0.5, "memory": 2_000_000_000,
                   "resources": {"slot": 1.0}}  # fmt: skip


def test_ray_options_empty_for_a_task_that_asks_nothing() -> None:
    assert ray_options({}, {}) == {}


def test_labels_become_ray_label_selectors_where_ray_has_the_operator() -> None:
    labels = {
        "gpu": "a100", "zone": {"in": ["b", "a"]}, "os": {"ne": "win"},
        "rack": {"not_in": [2, 1]}, "ssd": {"exists": True}, "mem_gb": {">=": 64},
        "spot": False,
    }  # fmt: skip
    assert ray_options({}, labels)["label_selector"] == {
        "gpu": "a100", "zone": "in(a,b)", "os": "!win", "rack": "!in(1,2)", "spot": "false",
    }  # fmt: skip


def test_cluster_offer_in_conveyors_names_without_rays_bookkeeping() -> None:
    total = {"CPU": 8.0, "GPU": 2.0, "memory": 1e10, "object_store_memory": 1e9,
             "node:10.0.0.1": 1.0, "node:__internal_head__": 1.0, "accelerator_type:A100": 1.0,
             "slot": 3.0}  # fmt: skip
    nodes = [{"zone": "a", "ray.io/node-id": "n1"}, {"zone": "b", "gpu": "a100"}]
    resources, labels = cluster_offer(total, nodes)
    assert resources == {"cpu": 8.0, "gpu": 2.0, "memory": 1e10, "slot": 3.0}
    assert labels == {"zone": "a", "ray.io/node-id": "n1", "gpu": "a100"}


def test_node_shortfall_asks_one_node_for_everything() -> None:
    nodes = [{"cpu": 2.0, "widget": 2.0}, {"cpu": 8.0}]
    assert node_shortfall({"cpu": 2, "widget": 2}, nodes) is None
    assert node_shortfall({}, nodes) is None and node_shortfall({"widget": 0}, nodes) is None
    assert node_shortfall({"widget": 3}, nodes) == (
        "it asks widget=3 and no node of the Ray cluster has that much (the most: widget=2)"
    )
    # 10 CPUs in all, but no node has 4 CPUs and a widget
    assert node_shortfall({"cpu": 4, "widget": 1}, nodes) is not None
