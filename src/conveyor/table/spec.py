"""Declaring a table: ``Table``, its columns (generators) and its samplers.

A column's generator reads other columns of the same row by naming them as parameters::

    table = conveyor.Table("reviews", seed=7)
    table.sampler("product", conveyor.category({"book": 3, "lamp": 1}))

    @table.column
    def title(product):
        return f"A {product} review"

Two parameter names are given rather than read from columns: ``rng`` (a ``random.Random``
seeded from the table's seed, the column and the row index, so a rebuilt row gets the same
draws) and ``row_index`` (the global row index; ``row_indices`` for a ``full_column``
generator, which receives lists: the column slices of the row group's kept rows).

Size: ``Table`` is the user's whole declaring surface (columns, samplers, providers and model
aliases, its plan and fingerprints) and most of its lines are those methods' docstrings.
"""

from __future__ import annotations

import graphlib
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

from conveyor.core.fingerprint import canonical, digest
from conveyor.core.limiter import check_key
from conveyor.core.tableplan import CELL, FULL_COLUMN, NodeDecl, TablePlan, plan_table
from conveyor.errors import UsageError

if TYPE_CHECKING:
    from conveyor.table.build import BuildSummary
    from conveyor.table.llm import LLMGenerator, Model
    from conveyor.table.samplers import Sampler

__all__ = ["Column", "Table"]

#: Parameter names a generator is given instead of a column's value.
GIVEN = frozenset({"rng", "row_index", "row_indices"})


@dataclass(eq=False)
class Column:
    """One generator of a table: what it fills, reads and calls, and how it runs."""

    name: str
    fn: Callable[..., Any] | None = None
    sampler: Sampler | None = None
    strategy: str = CELL
    deps: tuple[str, ...] = ()
    side_effects: tuple[str, ...] = ()
    keep_when: Callable[[Any], bool] | None = None
    endpoint: str | None = None
    retries: int | None = None
    executor: str | None = None
    timeout_s: float | None = None
    #: parameters the generator is given (``rng``, ``row_index``, ``row_indices``)
    given: tuple[str, ...] = ()
    #: the generator's parameter name for each dependency (they are the same unless ``deps``
    #: maps a parameter to another column)
    params: dict[str, str] = field(default_factory=dict)

    @property
    def fields(self) -> tuple[str, ...]:
        if self.sampler is not None:
            return self.sampler.fields or (self.name,)
        return (self.name, *self.side_effects)

    @property
    def is_async(self) -> bool:
        fn = self.fn
        if fn is None:
            return False
        return inspect.iscoroutinefunction(fn) or (
            not inspect.isfunction(fn)
            and inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
        )

    def decl(self) -> NodeDecl:
        return NodeDecl(self.name, self.fields, self.deps, self.strategy, self.endpoint)


class Table:
    """A table to build: named generators over rows, built row group by row group.

    ``row_group_size`` rows are generated and written together (default 1,000); ``in_flight``
    row groups are open at once (default 3); ``seed`` makes samplers and generators' ``rng``
    reproducible; ``retries`` is each cell's retry budget for retryable errors (429, 5xx,
    timeouts, connection errors; default 3); ``early_stop``: stop starting work when more than
    this share of the last ``early_stop_window`` outcomes failed (default 0.5 of 200).
    """

    def __init__(
        self,
        name: str = "table",
        *,
        row_group_size: int = 1000,
        in_flight: int = 3,
        seed: int = 0,
        retries: int = 3,
        early_stop: float = 0.5,
        early_stop_window: int = 200,
    ) -> None:
        if row_group_size < 1:
            raise UsageError(f"row_group_size must be >= 1, got {row_group_size}")
        if in_flight < 1:
            raise UsageError(f"in_flight must be >= 1, got {in_flight}")
        if not 0 < early_stop <= 1:
            raise UsageError(f"early_stop must be in (0, 1], got {early_stop}")
        self.name = name
        self.row_group_size = row_group_size
        self.in_flight = in_flight
        self.seed = seed
        self.retries = retries
        self.early_stop = early_stop
        self.early_stop_window = early_stop_window
        self.columns: list[Column] = []
        self.models: dict[str, Model] = {}
        #: provider name -> (base_url, api_key_env), the defaults of its models
        self.providers: dict[str, tuple[str | None, str]] = {}

    def __repr__(self) -> str:
        return f"Table({self.name!r}, columns={[c.name for c in self.columns]})"

    # -- declaring ----------------------------------------------------------------------------
    @overload
    def column(self, fn: Callable[..., Any], /) -> Callable[..., Any]: ...
    @overload
    def column(
        self, fn: None = None, /, **options: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...

    def column(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Add a column made by ``fn`` (a decorator, with or without options).

        Options: ``name`` (default: the function's name), ``deps`` (the columns it reads; by
        default its parameter names; a mapping ``{parameter: column}`` renames), ``strategy``
        (``"cell"``, one call per row, or ``"full_column"``, one call per row group with the
        kept rows' slices as lists, returning one value per row), ``side_effects`` (other
        columns it fills: it then returns a dict with its own column and those),
        ``keep_when`` (a predicate on its value; a row failing it is dropped), ``endpoint``
        (the rate-limited service it calls: its calls go through that endpoint's adaptive
        limiter), ``retries``, ``executor`` (``"thread"``, the default for a sync generator,
        or ``"inline"``, on the engine's thread: for cheap ones; async generators run on the
        event loop), ``timeout_s``.
        """
        if fn is None:
            return lambda f: self.column(f, **options)
        self.add(fn, **options)
        return fn

    def add(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        deps: Sequence[str] | Mapping[str, str] | None = None,
        strategy: str = CELL,
        side_effects: Sequence[str] = (),
        keep_when: Callable[[Any], bool] | None = None,
        endpoint: str | None = None,
        retries: int | None = None,
        executor: str | None = None,
        timeout_s: float | None = None,
    ) -> Column:
        """Add a column made by ``fn`` (``column`` without the decorator); see ``column``.
        ``fn`` may be an LLM generator (``conveyor.llm_text``, ``llm_structured``): then
        ``name`` is required, its dependencies are its prompt's variables and its endpoint is
        its model alias's (declared first with ``model``)."""
        from conveyor.table.llm import LLMGenerator

        if isinstance(fn, LLMGenerator):
            return self._add_llm(fn, name=name, retries=retries, timeout_s=timeout_s,
                                 keep_when=keep_when, side_effects=side_effects)  # fmt: skip
        if not callable(fn):
            raise UsageError(f"a column's generator must be callable, got {type(fn).__name__}")
        col_name = name or getattr(fn, "__name__", None)
        if not col_name or col_name == "<lambda>":
            raise UsageError("a lambda column needs name=")
        if strategy not in (CELL, FULL_COLUMN):
            raise UsageError(
                f"column {col_name!r}: strategy {strategy!r} is not 'cell' or 'full_column'"
            )
        if executor not in (None, "inline", "thread"):
            raise UsageError(f"column {col_name!r}: executor {executor!r} is not one of"
                             " inline, thread")  # fmt: skip
        if endpoint is not None:
            try:
                check_key(endpoint)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"column {col_name!r}: {exc}") from None
        params, given = _parameters(fn, col_name)
        wrong = "row_indices" if strategy == CELL else "row_index"
        if wrong in given:
            right = "row_index" if strategy == CELL else "row_indices"
            raise UsageError(f"column {col_name!r}: a {strategy} generator is given {right!r},"
                             f" not {wrong!r}")  # fmt: skip
        mapping: dict[str, str]
        wanted: list[str] = []
        if deps is None:  # a parameter with a default is an option, not a column to read
            required = set(_required(fn))
            mapping = {p: p for p in params if p in required}
        elif isinstance(deps, Mapping):
            unknown = [p for p in deps if p not in params]
            if unknown and not _takes_kwargs(fn):
                raise UsageError(f"column {col_name!r}: deps names {unknown[0]!r}, which is not"
                                 " a parameter of its generator")  # fmt: skip
            mapping = {p: deps.get(p, p) for p in params} | dict(deps)
        else:  # the columns it reads; the parameters named like one of them get its value
            wanted = list(deps)
            mapping = {p: p for p in params if p in wanted}
            unfed = [p for p in _required(fn) if p in params and p not in mapping]
            if unfed:
                raise UsageError(f"column {col_name!r}: parameter {unfed[0]!r} is not among its"
                                 f" deps {wanted} (name it there, map it with"
                                 " deps={parameter: column}, or give it a default)")  # fmt: skip
        _check_fields(col_name, (col_name, *side_effects))
        col = Column(
            name=col_name, fn=fn, strategy=strategy,
            deps=tuple(dict.fromkeys([*mapping.values(), *(wanted if isinstance(deps, Sequence)
                                                           and deps else ())])),
            side_effects=tuple(side_effects), keep_when=keep_when, endpoint=endpoint,
            retries=retries, executor=executor, timeout_s=timeout_s, given=given,
            params=mapping,
        )  # fmt: skip
        self.columns.append(col)
        return col

    def provider(
        self, name: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY"
    ) -> None:
        """Declare a provider: where its models live (``base_url``, an OpenAI-compatible
        API; ``None`` is OpenAI's) and the environment variable that holds its API key.
        Models declared with ``provider=name`` take these unless they give their own."""
        self.providers[name] = (base_url, api_key_env)

    def model(self, alias: str, model: str, *, replace: bool = False, **options: Any) -> Model:
        """Declare a model alias for LLM columns: ``model`` (the provider's model name) and
        ``provider`` (default ``openai``; its ``base_url`` and ``api_key_env`` are the
        defaults), ``base_url``, ``api_key_env`` (the environment variable holding the key;
        default ``OPENAI_API_KEY``), ``system`` (a default system prompt), ``params``
        (inference parameters: temperature, max_tokens, ...). The adaptive limiter's key is
        ``provider/model``: aliases of one model share it. ``replace`` redeclares an alias."""
        from conveyor.table.llm import Model

        if alias in self.models and not replace:
            raise UsageError(f"model alias {alias!r} is declared twice")
        params = options.get("params", {})
        if not isinstance(params, Mapping):
            raise UsageError(f"model {alias!r}: params must be a mapping, got"
                             f" {type(params).__name__}")  # fmt: skip
        try:
            m = Model(alias, model, **options)
        except TypeError as exc:
            raise UsageError(f"model {alias!r}: {exc}") from None
        try:
            check_key(m.endpoint)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"model {alias!r}: {exc}") from None
        self.models[alias] = m
        return m

    def resolved(self, alias: str) -> Model:
        """Model ``alias`` with its provider's ``base_url`` and key variable filled in (as the
        providers stand now: a provider may be declared after its models, or come from a
        models file). ``UsageError`` for an unknown alias or provider."""
        import dataclasses

        m = self.models.get(alias)
        if m is None:
            known = ", ".join(self.models) or "none declared: table.model(alias, model=...)"
            raise UsageError(f"unknown model alias {alias!r} ({known})")
        if m.provider in self.providers:
            base_url, key_env = self.providers[m.provider]
        elif m.provider == "openai" or m.base_url is not None:
            # (a model with its own base_url names its provider for the limiter's key only)
            base_url, key_env = None, "OPENAI_API_KEY"
        else:  # it would go to OpenAI's API, surely not what a misspelt provider meant
            known = ", ".join(self.providers) or "none declared: table.provider(name, ...)"
            raise UsageError(f"model {alias!r}: provider {m.provider!r} is not declared"
                             f" ({known})")  # fmt: skip
        return dataclasses.replace(m, base_url=m.base_url or base_url,
                                   api_key_env=m.api_key_env or key_env)  # fmt: skip

    def models_from(self, path: str | os.PathLike[str], *, replace: bool = True) -> None:
        """Declare the providers and model aliases of a YAML file (``conveyor.table.models``
        shows the format); its aliases replace ones already declared unless ``replace`` is
        false. ``conveyor build --models FILE`` calls this after loading the spec."""
        from conveyor.table.models import read_models

        got = read_models(path)
        for name, prov in got.providers.items():
            self.provider(name, base_url=prov.base_url, api_key_env=prov.api_key_env)
        for alias, spec in got.models.items():
            self.model(alias, spec.model, replace=replace, provider=spec.provider,
                       base_url=spec.base_url, api_key_env=spec.api_key_env,
                       system=spec.system, params=spec.params)  # fmt: skip

    def _add_llm(
        self, gen: LLMGenerator, *, name: str | None, retries: int | None,
        timeout_s: float | None, keep_when: Callable[[Any], bool] | None,
        side_effects: Sequence[str],
    ) -> Column:  # fmt: skip
        if not name:
            raise UsageError("an LLM column needs name=")
        _check_fields(name, (name, *side_effects))
        col = Column(
            name=name, fn=gen, deps=gen.variables, keep_when=keep_when,
            retries=retries, timeout_s=timeout_s, params={v: v for v in gen.variables},
        )  # fmt: skip
        if gen.alias in self.models:  # else bound when planned: a models file may come later
            self._bind(col, gen)
        self.columns.append(col)
        return col

    def _bind(self, col: Column, gen: LLMGenerator) -> None:
        try:
            m = self.resolved(gen.alias)
        except UsageError as exc:
            raise UsageError(f"column {col.name!r}: {exc}") from None
        gen.bind(m)
        col.endpoint = m.endpoint

    def sampler(self, name: str, sampler: Sampler) -> Column:
        """Add a seed column (or, for a seed file, columns) filled by ``sampler``
        (``conveyor.category``, ``uniform``, ``integers``, ``choice``, ``seed_file``)."""
        from conveyor.table.samplers import Sampler as SamplerBase

        if not isinstance(sampler, SamplerBase):
            raise UsageError(f"sampler {name!r}: expected a conveyor sampler, got"
                             f" {type(sampler).__name__}")  # fmt: skip
        sampler.bind(name)
        col = Column(name=name, sampler=sampler, strategy=FULL_COLUMN)
        _check_fields(name, col.fields)
        self.columns.append(col)
        return col

    # -- using --------------------------------------------------------------------------------
    def plan(self) -> TablePlan:
        """The checked column DAG (``GraphError`` naming the problem: a cycle, an unknown
        dependency, a column filled twice; ``UsageError`` for an unknown model alias). LLM
        columns are bound to their model aliases as they stand now."""
        from conveyor.table.llm import LLMGenerator

        for c in self.columns:
            if isinstance(c.fn, LLMGenerator):
                self._bind(c, c.fn)
        return plan_table([c.decl() for c in self.columns])

    def fingerprints(self, plan: TablePlan | None = None) -> dict[str, str]:
        """Each generator's fingerprint: its code, arguments and options, the table's seed,
        and its upstream generators' fingerprints (the Merkle rule of task fingerprints), so
        a change reaches everything downstream of it."""
        from conveyor.fingerprints import CodeHashes

        plan = plan or self.plan()
        by_name = {c.name: c for c in self.columns}
        code = CodeHashes()
        out: dict[str, str] = {}
        # the generators a full_column one settles on decide which rows it sees: they count
        # as its upstream here, so the order is topological over both kinds of edge
        waits = {i: (*plan.up[i], *plan.settle[i]) for i in range(len(plan.nodes))}
        for i in graphlib.TopologicalSorter(waits).static_order():
            node = plan.nodes[i]
            c = by_name[node.name]
            own: list[Any] = [c.name, c.strategy, list(c.fields), sorted(c.params.items()),
                              list(c.given), c.endpoint, self.seed]  # fmt: skip
            if c.sampler is not None:
                own.append(c.sampler.fingerprint())
            if c.fn is not None:
                fp = getattr(c.fn, "fingerprint", None)  # an LLM column: prompt, model, params
                own.append(fp() if callable(fp) else code.of_callable(c.fn))
            if c.keep_when is not None:
                own.append(code.of_callable(c.keep_when))
            ups = [out[plan.nodes[u].name] for u in waits[i]]
            out[node.name] = digest(canonical([own, ups]))
        return {n.name: out[n.name] for n in plan.nodes}

    def build(self, records: int, out: str, **options: Any) -> BuildSummary:
        """Build ``records`` rows into directory ``out``; see ``conveyor.table.build.build``."""
        from conveyor.table.build import build

        return build(self, records, out, **options)


def _parameters(fn: Callable[..., Any], name: str) -> tuple[list[str], tuple[str, ...]]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        msg = f"column {name!r}: cannot read its generator's parameters: {exc}"
        raise UsageError(msg) from None
    params: list[str] = []
    given: list[str] = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.kind is p.POSITIONAL_ONLY:
            continue
        (given if p.name in GIVEN else params).append(p.name)
    return params, tuple(given)


def _check_fields(name: str, fields: Sequence[str]) -> None:
    """A column named like a given parameter could never be read: refuse it."""
    for f in fields:
        if f in GIVEN:
            raise UsageError(f"column {name!r}: {f!r} is a parameter generators are given"
                             f" ({', '.join(sorted(GIVEN))}), not a column name")  # fmt: skip


def _required(fn: Callable[..., Any]) -> list[str]:
    """The parameters a call must pass (by keyword: generators are called with keywords)."""
    sig = inspect.signature(fn)
    return [p.name for p in sig.parameters.values() if p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]  # fmt: skip


def _takes_kwargs(fn: Callable[..., Any]) -> bool:
    sig = inspect.signature(fn)
    return any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
