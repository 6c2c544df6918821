"""Admission in every store (issue 5): group caps, weighted fair share, labels and resources per
worker offer, no head-of-line blocking, gangs, ``explain`` reason codes and admission events —
on memory, SQLite and PostgreSQL (``store_url`` in conftest.py). Two stores opened on one URL
act as two worker processes; the CLI tests run real `conveyor` subprocesses.

Time is a parameter (``now`` values are made up): no sleeps, no timed assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor.core.admission import Offer
from conveyor.errors import GraphError
from conveyor.graphfile import graph_from_dict
from conveyor.store.base import Claim, Store, WorkerProfile

T0 = 1_000_000.0
LEASE = 30.0


def graph(name: str, *tasks: dict[str, Any], groups: dict[str, Any] | None = None) -> Any:
    data: dict[str, Any] = {"name": name, "tasks": [{"cmd": "true", **t} for t in tasks]}
    if groups:
        data["groups"] = groups
    return graph_from_dict(data, check_functions=False)


def offer(slots: int = 4, labels: dict[str, Any] | None = None, **resources: float) -> Offer:
    return Offer(slots, dict(resources), dict(labels or {}), slots, dict(resources))


def take(store: Store, o: Offer, worker: str = "w1", now: float = T0) -> list[Claim]:
    return store.claim(worker, 1, now, LEASE, offer=o)


def ids(claims: list[Claim]) -> list[str]:
    return [c.id for c in claims]


@pytest.fixture
def pair(store_url: str, open_url: Any) -> tuple[Store, Store]:
    """Two handles on one store: two worker processes (memory: the same store twice)."""
    a = open_url(store_url)
    b = a if store_url.startswith("memory") else open_url(store_url)
    return a, b


def test_admission_cap_holds_across_two_workers(pair: tuple[Store, Store]) -> None:
    s1, s2 = pair
    tasks = [{"id": f"a{i}", "group": "a"} for i in range(6)]
    s1.open_graph(graph("g", *tasks, groups={"a": {"cap": 2}}), T0)
    got = take(s1, offer(), "w1") + take(s2, offer(), "w2")
    assert ids(got) == ["a0", "a1"]
    assert take(s1, offer(), "w1") == [] and take(s2, offer(), "w2") == []  # 2/2 running
    assert s2.complete(got[0], None, T0)  # the other worker's completion frees the slot
    nxt = take(s1, offer(), "w1")
    assert ids(nxt) == ["a2"]
    assert take(s2, offer(), "w2") == []
    assert s1.fail(nxt[0], "boom", T0, None) and s1.release(got[1], T0)
    assert ids(take(s2, offer(), "w2") + take(s1, offer(), "w1")) == ["a1", "a3"]


def test_admission_weighted_fair_share_order(store_url: str, open_url: Any) -> None:
    s = open_url(store_url)
    tasks = [{"id": f"{g}{i}", "group": g} for g in ("a", "b") for i in range(4)]
    s.open_graph(graph("g", *tasks, groups={"a": {"weight": 1}, "b": {"weight": 2}}), T0)
    order = [ids(take(s, offer(8))) for _ in range(6)]
    # running/weight lowest first, ties to the better key: b gets two for each of a's.
    assert order == [["a0"], ["b0"], ["b1"], ["a1"], ["b2"], ["b3"]]


def test_admission_labels_and_resources_match_each_workers_offer(pair: tuple[Store, Store]) -> None:
    s1, s2 = pair
    s1.open_graph(
        graph("g", {"id": "gpu", "labels": {"gpu": {"in": ["a100", "h100"]}}},
              {"id": "big", "resources": {"cpu": 8}},
              {"id": "mem", "labels": {"mem_gb": {">=": 64}}},
              {"id": "plain"}),
        T0,
    )  # fmt: skip
    small = offer(4, {"gpu": "k80", "mem_gb": 32}, cpu=4)
    large = offer(4, {"gpu": "a100", "mem_gb": 128}, cpu=16)
    assert ids(take(s1, small, "w1")) == ["plain"]
    assert take(s1, small, "w1") == []
    got = [ids(take(s2, large, "w2")) for _ in range(3)]
    assert sorted(t for g in got for t in g) == ["big", "gpu", "mem"]


def test_admission_no_head_of_line_blocking(store_url: str, open_url: Any) -> None:
    s = open_url(store_url)
    s.open_graph(
        graph("g", {"id": "huge", "resources": {"cpu": 64}},
              {"id": "s1", "resources": {"cpu": 1}}, {"id": "s2", "resources": {"cpu": 1}}),
        T0,
    )  # fmt: skip
    o = offer(4, cpu=2)
    first = take(s, o)
    assert ids(first) == ["s1"]  # the bigger head does not hold the small ones back
    assert ids(take(s, offer(3, cpu=1))) == ["s2"]


def test_admission_gang_all_or_nothing(pair: tuple[Store, Store]) -> None:
    s1, s2 = pair
    members = [{"id": f"m{i}", "gang": "g1", "gang_size": 3} for i in range(3)]
    s1.open_graph(graph("g", *members, {"id": "solo"}), T0)
    # A 4-slot worker with two free cannot start the gang at the head: its free slots are held
    # for it (a bounded wait), nothing else starts there.
    assert take(s1, Offer(2, {}, {}, 4), "w1", T0) == []
    got = take(s2, offer(4), "w2", T0 + 1)
    assert ids(got) == ["m0", "m1", "m2"]  # one decision, one worker, all members
    assert ids(take(s1, offer(2), "w1", T0 + 1)) == ["solo"]


def test_admission_gang_reservation_is_bounded(store_url: str, open_url: Any) -> None:
    s = open_url(store_url)
    members = [{"id": f"m{i}", "gang": "g1"} for i in range(3)]
    s.open_graph(graph("g", *members, {"id": "solo"}), T0)
    small = Offer(2, {}, {}, 4)  # a 4-slot worker with 2 free: the gang could fit it later
    assert take(s, small, now=T0) == []
    why = s.explain("m0", T0, [small]).as_dict()
    assert why["reason"] == "gang_incomplete" and why["need"] == 3
    assert why["largest_free_set"] == 2 and why["reserved"] is True
    assert ids(take(s, small, now=T0 + 31)) == ["solo"]  # the reservation ran out (30 s)
    why = s.explain("m0", T0 + 31, [small]).as_dict()
    assert why["reservation_released"] is True


def test_admission_bad_input_is_refused_at_submit(store_url: str, open_url: Any) -> None:
    s = open_url(store_url)
    bad = [
        ({"id": "t", "labels": {"gpu": {"like": "a1"}}}, {}, "unknown operator"),
        ({"id": "t", "labels": {"gpu": {">=": "a100"}}}, {}, "needs a number"),
        ({"id": "t", "gang": "g", "gang_size": 2}, {}, "declares size 2"),
    ]
    for task, groups, msg in bad:
        with pytest.raises(GraphError, match=msg):
            s.open_graph(graph("g", task, groups=groups), T0)
    gang = [{"id": f"m{i}", "gang": "g", "group": "a"} for i in range(3)]
    with pytest.raises(GraphError, match="capped at 2"):
        s.open_graph(graph("g", *gang, groups={"a": {"cap": 2}}), T0)
    with pytest.raises(GraphError, match="unknown group"):
        graph("g", {"id": "t", "group": "nope"}, groups={"a": {}})
    with pytest.raises(GraphError, match="group 'a', field 'weight'"):
        graph("g", {"id": "t", "group": "a"}, groups={"a": {"weight": 0}})


def test_admission_explain_codes_with_numbers(store_url: str, open_url: Any) -> None:
    s = open_url(store_url)
    s.open_graph(
        graph("g", {"id": "r0", "group": "capped"}, {"id": "r1", "group": "capped"},
              {"id": "after", "deps": ["r0"], "group": "free"},
              {"id": "f0", "group": "free"}, {"id": "f1", "group": "free"},
              {"id": "k80", "labels": {"gpu": "a100"}, "group": "free"},
              {"id": "cpu64", "resources": {"cpu": 64}, "group": "free"},
              {"id": "retry", "group": "free", "retries": 2},
              groups={"capped": {"cap": 1}, "free": {}}),
        T0,
    )  # fmt: skip
    o = offer(8, {"gpu": "k80"}, cpu=8)

    def why(tid: str, now: float = T0) -> dict[str, Any]:
        return s.explain(tid, now, [o]).as_dict()

    assert ids(take(s, o)) == ["r0"]  # capped at 1 now
    assert why("r1") == {"reason": "group_cap", "message": "group capped is at its cap: 1/1",
                         "group": "capped", "running": 1, "cap": 1}  # fmt: skip
    w = why("after")
    assert (w["reason"], w["parents"], w["waiting"]) == ("waiting_on_parents", ["r0"], 1)
    assert why("k80")["reason"] == "no_matching_worker"
    assert why("k80")["closest_worker_labels"] == {"gpu": "k80"}
    w = why("cpu64")
    assert (w["reason"], w["need"], w["free"]) == ("never_fits", {"cpu": 64.0}, {"cpu": 8.0})
    w = why("f1")
    assert (w["reason"], w["ahead"], w["first"]) == ("behind_higher_priority", 1, "f0")
    busy = Offer(8, {"cpu": 2.0}, {}, 8, {"cpu": 128.0})
    w = s.explain("cpu64", T0, [busy]).as_dict()
    assert (w["reason"], w["free"]) == ("insufficient_resources", {"cpu": 2.0})
    got = []
    while (c := take(s, o)) and len(got) < 5:
        got += c
        if c[0].id == "retry":
            assert s.fail(c[0], "boom", T0, T0 + 60)
            w = why("retry")
            assert (w["reason"], w["until"], w["in_s"]) == ("retry_backoff", T0 + 60, 60.0)
            break
    assert s.explain("r0", T0, [o]).code == "running"
    with pytest.raises(GraphError, match="unknown task"):
        s.explain("nope", T0, [o])


def test_admission_fair_share_reason(store_url: str, open_url: Any) -> None:
    s = open_url(store_url)
    tasks = [{"id": f"{g}{i}", "group": g} for g in ("heavy", "light") for i in range(3)]
    s.open_graph(graph("g", *tasks, groups={"heavy": {}, "light": {}}), T0)
    o = offer(4)
    assert ids(take(s, o) + take(s, o)) == ["heavy0", "light0"]
    h = take(s, o)
    assert ids(h) == ["heavy1"]
    w = s.explain("heavy2", T0, [o]).as_dict()
    assert w["reason"] == "fair_share" and w["behind_groups"] == ["light"]
    assert (w["group"], w["running"], w["weight"], w["share"]) == ("heavy", 2, 1.0, 2.0)


def test_admission_events_in_the_audit_trail(store_url: str, open_url: Any) -> None:
    if store_url.startswith("memory"):
        pytest.skip("the memory store emits these events live (test_admission_engine.py)")
    s = open_url(store_url)
    members = [{"id": f"m{i}", "gang": "g1", "group": "a"} for i in range(2)]
    s.open_graph(graph("g", *members, {"id": "x", "group": "a"}, groups={"a": {"cap": 2}}), T0)
    assert take(s, Offer(1, {}, {}, 2)) == []  # held for the gang: reserved, blocked
    got = take(s, offer(2))
    assert ids(got) == ["m0", "m1"]
    events = {e["event"]: e for e in s.iter_events()}
    assert events["gang_reserved"]["gang"] == "g1"
    assert events["gang_reserved"]["reason"] == "gang_incomplete"
    assert events["admission_blocked"]["reason"] == "gang_incomplete"
    assert events["gang_started"]["tasks"] == ["m0", "m1"]
    assert events["group_capped"]["reason"] == "group_cap"
    assert (events["group_capped"]["running"], events["group_capped"]["cap"]) == (2, 2)


def test_admission_plain_graph_keeps_the_fast_path(store_url: str, open_url: Any) -> None:
    s = open_url(store_url)
    s.open_graph(graph("g", {"id": "a"}, {"id": "b", "deps": ["a"]}), T0)
    assert not s.admission
    a = s.claim("w1", 1, T0, LEASE)
    assert ids(a) == ["a"] and s.complete(a[0], None, T0)
    assert ids(s.claim("w1", 1, T0, LEASE)) == ["b"]


# -- the real CLI, two worker processes ----------------------------------------------------------
def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_admission_cli_two_workers_labels_and_cap(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/run.db"
    tasks = [{"id": f"a{i}", "cmd": "true", "group": "a"} for i in range(8)]
    tasks += [{"id": f"z{i}", "cmd": "true", "labels": {"zone": "b"}} for i in range(4)]
    (tmp_path / "g.json").write_text(json.dumps({"name": "g", "tasks": tasks,
                                                 "groups": {"a": {"cap": 2}}}))  # fmt: skip
    assert cli("submit", "g.json", "--db", db, cwd=tmp_path).returncode == 0
    argv = [sys.executable, "-m", "conveyor.cli", "worker", "--db", db, "-q", "-w", "3"]
    procs = [
        subprocess.Popen(
            [*argv, "--labels", f"zone={z}"], cwd=tmp_path, stderr=subprocess.PIPE, text=True
        )
        for z in ("a", "b")
    ]
    done = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in done]
    out = cli("events", "--db", db, cwd=tmp_path)
    events = [json.loads(line) for line in out.stdout.splitlines()]
    running: set[str] = set()
    most = 0
    zone_b_workers = set()
    for e in events:  # replayed in commit order: the cap held at every moment
        if e["event"] == "task_started" and e["task"].startswith("a"):
            running.add(e["task"])
            most = max(most, len(running))
        elif e["event"] == "task_finished":
            running.discard(e["task"])
        if e["event"] == "task_started" and e["task"].startswith("z"):
            zone_b_workers.add(e["worker"])
    assert most == 2
    assert len(zone_b_workers) == 1  # only the worker labelled zone=b ran them
    joined = {e["worker"]: e for e in events if e["event"] == "worker_joined"}
    assert len(joined) == 2
    st = json.loads(cli("status", "--db", db, "--json", cwd=tmp_path).stdout)
    assert st["counts"]["done"] == 12
    assert st["group_shares"]["a"] == {"running": 0, "cap": 2, "weight": 1.0}


def test_admission_cli_why_and_status(tmp_path: Path, open_url: Any) -> None:
    db = f"sqlite:///{tmp_path}/run.db"
    tasks = [{"id": "train", "cmd": "true", "labels": {"gpu": "a100"}},
             {"id": "big", "cmd": "true", "resources": {"cpu": 64}},
             {"id": "after", "cmd": "true", "deps": ["big"]},
             {"id": "c0", "cmd": "true", "group": "capped"},
             {"id": "c1", "cmd": "true", "group": "capped"}]  # fmt: skip
    (tmp_path / "g.json").write_text(json.dumps({"name": "g", "tasks": tasks,
                                                 "groups": {"capped": {"cap": 1}}}))  # fmt: skip
    assert cli("submit", "g.json", "--db", db, cwd=tmp_path).returncode == 0
    # Two live workers on other machines (their rows are what `why` reads), one runs c0.
    s = open_url(db)
    for name, labels in (("hostA:1", {"gpu": "k80", "zone": "a"}), ("hostB:1", {"zone": "b"})):
        # Leases alive for the whole test, however slow the machine.
        s.configure(WorkerProfile(labels=labels, resources={"cpu": 8.0}, lease_s=1e9))
        s.register_worker(name, time.time(), {"slots": 4})
    only_c0 = Offer(1, {"cpu": 1.0}, {}, 1, {"cpu": 1.0})
    assert ids(s.claim("hostB:1", 1, time.time(), LEASE, offer=only_c0)) == ["c0"]

    def why(tid: str) -> tuple[int, dict[str, Any]]:
        out = cli("why", tid, "--db", db, "--json", cwd=tmp_path)
        return out.returncode, json.loads(out.stdout) if out.returncode == 0 else {}

    code, w = why("train")
    assert code == 0 and w["task"] == "train" and w["reason"] == "no_matching_worker"
    assert w["asked"] == ["gpu=a100"] and w["closest_worker_labels"]["gpu"] == "k80"
    code, w = why("big")
    assert (w["reason"], w["need"], w["free"]) == ("never_fits", {"cpu": 64.0}, {"cpu": 8.0})
    assert why("after")[1]["parents"] == ["big"]
    expected = {"task": "c1", "reason": "group_cap", "running": 1, "cap": 1, "group": "capped",
                "message": "group capped is at its cap: 1/1"}  # fmt: skip
    assert why("c1")[1] == expected
    assert why("nope")[0] == 2
    text = cli("why", "c1", "--db", db, cwd=tmp_path).stdout
    assert text.startswith("c1: group_cap: group capped is at its cap: 1/1")
    st = json.loads(cli("status", "--db", db, "--json", cwd=tmp_path).stdout)
    assert st["reasons"] == {"no_matching_worker": 1, "never_fits": 1, "waiting_on_parents": 1,
                             "group_cap": 1}  # fmt: skip
    assert st["group_shares"]["capped"] == {"running": 1, "cap": 1, "weight": 1.0}
    text = cli("status", "--db", db, cwd=tmp_path).stdout
    assert "group_cap 1" in text and "group capped: ready 1, running 1 (cap 1, weight 1)" in text


@pytest.mark.parametrize(
    ("data", "msg"),
    [
        ({"tasks": [{"id": "t", "labels": {"gpu": {"like": "a1"}}}]}, "unknown operator 'like'"),
        ({"tasks": [{"id": "t", "labels": {"gpu": {">=": "a100"}}}]}, ">= needs a number"),
        ({"groups": {"a": {"weight": 0}}, "tasks": [{"id": "t", "group": "a"}]}, "weight"),
        ({"groups": {"a": {}}, "tasks": [{"id": "t", "group": "b"}]}, "unknown group 'b'"),
        ({"groups": {"a": {"cap": 1}},
          "tasks": [{"id": f"m{i}", "group": "a", "gang": "g"} for i in range(2)]},
         "capped at 1"),
    ],
)  # fmt: skip
def test_admission_cli_submit_refuses_bad_input(tmp_path: Path, data: Any, msg: str) -> None:
    (tmp_path / "g.json").write_text(json.dumps({"name": "g", **data}))
    out = cli("submit", "g.json", "--db", f"sqlite:///{tmp_path}/run.db", cwd=tmp_path)
    assert out.returncode == 2 and msg in out.stderr and "Traceback" not in out.stderr
