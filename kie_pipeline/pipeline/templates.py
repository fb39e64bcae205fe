"""Manifests generated from templates: a prompt with named slots, the values of each slot, fixed
columns and a split assignment, expanded into manifest rows (``kie-pipeline expand``).

A template is a YAML file:

.. code-block:: yaml

    prompt: "A {animal} in {style} style, {light}"
    slots:
      animal: [red fox, snowy owl, tabby cat]
      style: [watercolor, woodcut]
      light: {dawn light: 3, overcast: 1}   # a mapping: each value with its weight (for a sample)
    sample: {size: 8, seed: 7}              # optional: 8 of the 12 combinations
    columns: {batch: animals, model: nano-banana-pro, aspect_ratio: "1:1", resolution: 1K}
    split: {seed: 42, fractions: {train: 0.8, val: 0.1, test: 0.1}}
    id_prefix: animals                      # optional

Every combination of slot values is one row (or, with ``sample``, ``size`` of them). A row's id is a
readable slug of its slot values plus a short hash of them (``animals-red-fox-watercolor-dawn-light-
3f2a...``), its split is drawn from a hash of its id and the split's seed, and a sampled row is chosen
by a priority drawn from a hash of its slot values and the sample's seed. None of the three depends on
the other rows: adding a value to a slot adds rows and leaves every existing row's id, prompt and split
as they were, so a rerun reuses them (the pipeline reuses a row whose id, model and input are
unchanged). With a sample, raising ``size`` keeps every row already chosen; adding values at the same
size may let new combinations displace some (the highest priorities win).

Each slot's values also become a column named after the slot (``animal``, ``style``...), carried
through to the catalog. Validation collects every problem (as :class:`~.manifest.ManifestError` does),
each naming the field, before any row is built; :func:`expand_template` then checks the rows as the
pipeline will (:func:`~.manifest.validate_manifest`) before anything is written.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import itertools
import json
import math
import os
import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import yaml

from .manifest import (
    INPUT_COLUMNS,
    MAX_ID_CHARS,
    REQUIRED_COLUMNS,
    ManifestError,
    Problem,
    validate_manifest,
)
from .schema import RESERVED_NAMES
from .store import write_atomically

#: Rows a template may expand to unless the caller allows more (``--max-rows``).
DEFAULT_MAX_ROWS = 100_000
#: Combinations a sample may draw from: each one is hashed to get its priority.
DEFAULT_MAX_COMBINATIONS = 1_000_000
#: The keys a template may have.
TEMPLATE_KEYS = ("prompt", "slots", "sample", "columns", "split", "id_prefix")
#: The column of the split unless the template's ``split.column`` names another.
DEFAULT_SPLIT_COLUMN = "split"
SLOT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
ID_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,59}$")
#: Hex characters of the slot-values hash in an id (48 bits).
HASH_CHARS = 12
SLUG_CHARS = 80
_MANIFEST_COLUMNS = frozenset((*REQUIRED_COLUMNS, "batch", "model", *INPUT_COLUMNS))


class TemplateError(ManifestError):
    """The template is invalid; ``problems`` lists every bad field (``row`` and ``id`` are None).

    A :class:`~.manifest.ManifestError`, so that callers that catch one catch both."""

    def __init__(self, problems: list[Problem], source: str = "template") -> None:
        self.problems = problems
        shown = "\n".join(f"  - field {p.field!r}: {p.message}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        ValueError.__init__(
            self, f"{source} is invalid ({len(problems)} problem(s)); nothing was written:\n{shown}{more}"
        )


@dataclass(frozen=True)
class Sample:
    """Draw ``size`` of the combinations; ``seed`` decides which (weights favour some values)."""

    size: int
    seed: int


@dataclass(frozen=True)
class Split:
    """Each row's split (a name of ``fractions``), drawn from its id and ``seed``, in ``column``."""

    fractions: tuple[tuple[str, float], ...]
    seed: int
    column: str = DEFAULT_SPLIT_COLUMN

    def of(self, row_id: str) -> str:
        """The split of the row ``row_id``: the same for the same id and seed, whatever the other rows."""
        u = _unit(f"split\0{self.seed}\0{row_id}")
        total = 0.0
        for name, fraction in self.fractions:
            total += fraction
            if u < total:
                return name
        return self.fractions[-1][0]  # rounding: the fractions sum to 1 within 1e-9


@dataclass(frozen=True)
class Template:
    """A valid template (see the module's doc); :meth:`expand` gives its manifest rows."""

    prompt: str
    #: Slot name → its values, in the prompt's order of first use.
    slots: dict[str, tuple[str, ...]]
    #: Slot name → one weight per value (1.0 where the template gives none).
    weights: dict[str, tuple[float, ...]]
    columns: dict[str, Any]
    sample: Sample | None = None
    split: Split | None = None
    id_prefix: str = ""

    @property
    def combinations(self) -> int:
        """How many combinations of slot values there are (the rows without a sample)."""
        return math.prod(len(v) for v in self.slots.values())

    @property
    def rows(self) -> int:
        """How many rows the template expands to."""
        return self.sample.size if self.sample else self.combinations

    def expand(self) -> pd.DataFrame:
        """The manifest rows: ``id, prompt``, the fixed columns, one column per slot, the split column.

        Rows come in the order of the slot values (the first slot varies slowest). Text throughout:
        the result writes to CSV or Parquet as is and reads back unchanged."""
        names = list(self.slots)
        keys = _Keys(self.slots)
        combos: Any = itertools.product(*(range(len(self.slots[n])) for n in names))
        if self.sample is not None:
            combos = _sampled(self, keys, combos)
        records = []
        for combo in combos:
            values = {n: self.slots[n][i] for n, i in zip(names, combo, strict=True)}
            row_id = keys.row_id(combo, self.id_prefix)
            record = {"id": row_id, "prompt": self.prompt.format(**values), **self.columns, **values}
            if self.split is not None:
                record[self.split.column] = self.split.of(row_id)
            records.append(record)
        return pd.DataFrame(records, dtype=object)


class _Keys:
    """A combination's canonical key and id, from text computed once per slot value (not per row)."""

    def __init__(self, slots: Mapping[str, Sequence[str]]) -> None:
        names = list(slots)
        self._order = sorted(range(len(names)), key=lambda j: names[j])
        # {"animal":"fox","style":"woodcut"}: JSON of the values by slot name, as _values_key writes it.
        self._json = [[f"{_json(n)}:{_json(v)}" for v in slots[n]] for n in names]
        self._slugs = [[slug(v)[:30].strip("-") for v in slots[n]] for n in names]

    def key(self, combo: Sequence[int]) -> str:
        """The canonical text of the combination's slot values (:func:`_values_key`)."""
        return "{" + ",".join(self._json[j][combo[j]] for j in self._order) + "}"

    def row_id(self, combo: Sequence[int], prefix: str) -> str:
        """The combination's row id (:func:`row_id_of`)."""
        return _id(self.key(combo), [self._slugs[j][i] for j, i in enumerate(combo)], prefix)


def _json(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _unit(key: str) -> float:
    """A number in (0, 1), uniform, fixed by ``key``."""
    digest = hashlib.sha256(key.encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2**64


def _values_key(values: Mapping[str, str]) -> str:
    """The canonical text of a row's slot values (what its id hash and its sample priority are of)."""
    return json.dumps(dict(sorted(values.items())), ensure_ascii=False, separators=(",", ":"))


def _sampled(template: Template, keys: _Keys, combos: Any) -> list[tuple[int, ...]]:
    """The ``sample.size`` combinations of highest priority, in product order.

    Weighted sampling without replacement (Efraimidis and Spirakis): priority ``log(u) / w`` with
    ``u`` from a hash of the seed and the slot values and ``w`` the product of the values' weights.
    A combination's priority never depends on the others."""
    assert template.sample is not None
    prefix = f"sample\0{template.sample.seed}\0"
    weights = list(template.weights.values())
    weighted = any(w != 1.0 for ws in weights for w in ws)
    keyed = []
    for combo in combos:
        priority = math.log(_unit(prefix + keys.key(combo)))
        if weighted:
            priority /= math.prod(weights[j][i] for j, i in enumerate(combo))
        keyed.append((priority, combo))
    return sorted(combo for _, combo in heapq.nlargest(template.sample.size, keyed))


def slug(text: str) -> str:
    """``text`` as lower-case ASCII letters, digits and single dashes ("Café au lait" → "cafe-au-lait")."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def row_id_of(values: Mapping[str, str], prefix: str = "") -> str:
    """A row's id: ``prefix``, a readable slug of its slot values, and a hash of them (12 hex).

    The same slot values always give the same id, whatever the other rows; it meets the manifest's
    id rules (no '/', '\\\\', '..' nor control character; at most 200 characters)."""
    return _id(_values_key(values), [slug(v)[:30].strip("-") for v in values.values()], prefix)


def _id(key: str, slugs: Sequence[str], prefix: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:HASH_CHARS]
    readable = "-".join(s for s in slugs if s)[:SLUG_CHARS].strip("-")
    out = "-".join(part for part in (prefix, readable, digest) if part)
    assert len(out) <= MAX_ID_CHARS
    return out


# -- reading and checking --------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in a mapping is an error (PyYAML would keep
    the last one silently: a slot's values given twice would lose the first list)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, list | dict):
            continue  # unhashable: SafeLoader reports it itself
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"the key {key!r} is given twice",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_template(path: str) -> Any:
    """The YAML document in ``path`` (a local file).

    Raises:
        TemplateError: field ``path`` when the file cannot be read (missing, a folder, no permission);
            ``encoding`` or ``yaml`` when it is not UTF-8 or not YAML (with the line).
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise TemplateError([Problem(None, None, "path", f"no template at {path}")], path) from None
    except OSError as exc:
        raise TemplateError([Problem(None, None, "path", f"cannot be read: {exc.strerror}")], path) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problem = Problem(None, None, "encoding", f"invalid UTF-8 at byte {exc.start} (line {line})")
        raise TemplateError([problem], path) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc)
        raise TemplateError(
            [Problem(None, None, "yaml", f"is not valid YAML: {what}{where}")], path
        ) from None


def load_template(
    path: str, *, max_rows: int = DEFAULT_MAX_ROWS, max_combinations: int = DEFAULT_MAX_COMBINATIONS
) -> Template:
    """Read and check the template file ``path``.

    Raises:
        TemplateError: listing every problem, each naming its field (``slots.animal[2]``...).
    """
    return parse_template(
        read_template(path), source=path, max_rows=max_rows, max_combinations=max_combinations
    )


def parse_template(
    data: Any,
    source: str = "template",
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_combinations: int = DEFAULT_MAX_COMBINATIONS,
) -> Template:
    """Check a template given as data (what its YAML reads as) and return it.

    ``max_rows`` caps the rows it may expand to; ``max_combinations`` the combinations a sample may
    draw from (each is hashed).

    Raises:
        TemplateError: listing every problem, each naming its field.
    """
    problems: list[Problem] = []

    def bad(field: str, message: str) -> None:
        problems.append(Problem(None, None, field, message))

    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise TemplateError(
            [Problem(None, None, "template", f"must be a mapping of keys; it is {kind}")], source
        )
    for key in data:
        if key not in TEMPLATE_KEYS:
            bad(str(key), f"is not a template key (expected one of: {', '.join(TEMPLATE_KEYS)})")

    prompt, used = _check_prompt(data.get("prompt"), bad)
    # An unreadable prompt uses no slot that can be told: its slots are not reported unused.
    slots, weights = _check_slots(data.get("slots", {}), used, bad if prompt is not None else _ignore)
    columns = _check_columns(data.get("columns", {}), bad)
    sample = _check_sample(data.get("sample"), bad)
    split = _check_split(data.get("split"), bad)
    id_prefix = _check_id_prefix(data.get("id_prefix", ""), bad)

    taken = {"columns": set(columns)}
    if split is not None:
        if split.column in columns:
            bad("split.column", f"{split.column!r} is also a fixed column (columns.{split.column})")
        taken["split.column"] = {split.column}
    for name in slots:
        if name in _MANIFEST_COLUMNS or name in RESERVED_NAMES:
            bad(
                f"slots.{name}",
                f"{name!r} is a manifest or catalog column (each slot becomes a column): rename it",
            )
        for where, names in taken.items():
            if name in names:
                bad(f"slots.{name}", f"{name!r} is also a column of {where} (each slot becomes a column)")

    if any(any(w != 1.0 for w in ws) for ws in weights.values()) and sample is None:
        bad("slots", "weights only choose which rows a sample keeps: add sample: {size: N, seed: S}")
    if prompt is not None and list(slots) == used and all(slots.values()):
        combinations = math.prod(len(v) for v in slots.values())
        sizes = " × ".join(f"{len(v)} {n}" for n, v in slots.items()) or "the prompt has no slot"
        if sample is not None:
            if sample.size > combinations:
                bad("sample.size", f"{sample.size} is more than the {combinations} combinations ({sizes})")
            elif sample.size > max_rows:
                bad("sample.size", f"{sample.size} rows is more than the cap of {max_rows} (max_rows)")
            if combinations > max_combinations:
                bad(
                    "slots",
                    f"a sample draws from {combinations} combinations ({sizes}), more than the cap of "
                    f"{max_combinations} (max_combinations)",
                )
        elif combinations > max_rows:
            bad(
                "slots",
                f"expands to {combinations} rows ({sizes}), more than the cap of {max_rows} (max_rows): "
                "remove values, or draw a sample",
            )
    if problems:
        raise TemplateError(problems, source)
    assert prompt is not None
    return Template(prompt, slots, weights, columns, sample, split, id_prefix)


def _ignore(field: str, message: str) -> None:
    """A ``bad`` that reports nothing."""


def _check_prompt(value: Any, bad: Any) -> tuple[str | None, list[str]]:
    """The prompt and the slots it uses (in order of first use)."""
    if value is None:
        bad("prompt", "is missing: the prompt template, with {slot} where a slot's value goes")
        return None, []
    if not isinstance(value, str) or not value.strip():
        bad("prompt", "must be non-empty text")
        return None, []
    used: list[str] = []
    try:
        fields = list(string.Formatter().parse(value))
    except ValueError as exc:
        bad("prompt", f"{exc} (write {{{{ and }}}} for literal braces)")
        return None, []
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if not SLOT_NAME.match(name):
            bad("prompt", f"{{{name}}} is not a slot name (letters, digits and _, not starting with a digit)")
        elif spec or conversion:
            bad("prompt", f"{{{name}}} takes no format or conversion: write {{{name}}}")
        elif name not in used:
            used.append(name)
    return value, used


def _check_slots(
    value: Any, used: list[str], bad: Any
) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[float, ...]]]:
    """Each used slot's values and weights, in the prompt's order."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        bad("slots", "must be a mapping of slot name → its values (a list, or a mapping value → weight)")
        return {}, {}
    slots: dict[str, tuple[str, ...]] = {}
    weights: dict[str, tuple[float, ...]] = {}
    for name in used:
        if name not in value:
            bad("prompt", f"uses the slot {{{name}}}, which has no values under slots")
    for name, given in value.items():
        field = f"slots.{name}"
        if name not in used:
            bad(field, f"the prompt does not use {{{name}}}")
            continue
        if isinstance(given, dict):
            pairs = list(given.items())
        elif isinstance(given, list):
            pairs = [(v, 1.0) for v in given]
        else:
            bad(field, "must be a list of values, or a mapping value → weight")
            continue
        if not pairs:
            bad(field, "has no values")
            continue
        values: list[str] = []
        ws: list[float] = []
        first: dict[str, int] = {}
        for i, (raw, weight) in enumerate(pairs):
            where = f"{field}[{i}]"
            text = _value_text(raw, where, bad)
            if isinstance(given, dict) and (
                isinstance(weight, bool)
                or not isinstance(weight, int | float)
                or not math.isfinite(weight)
                or weight <= 0
            ):
                bad(where, f"the weight of {raw!r} must be a positive number, not {weight!r}")
                weight = 1.0
            if text is None:
                continue
            if text in first:
                bad(where, f"{text!r} duplicates value {first[text]}")
                continue
            first[text] = i
            values.append(text)
            ws.append(float(weight))
        if len(values) == len(pairs):
            slots[name] = tuple(values)
            weights[name] = tuple(ws)
        else:
            slots[name] = ()  # a problem was reported: no size check on it
    return {n: slots[n] for n in used if n in slots}, {n: weights[n] for n in used if n in weights}


def _value_text(raw: Any, where: str, bad: Any) -> str | None:
    """A slot value as text; None (and a problem) if it is not text or a whole number, or empty."""
    if isinstance(raw, bool):
        bad(where, f"{raw!r} is a boolean (YAML reads yes/no/on/off/true/false so): quote it")
        return None
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float):
        bad(where, f"{raw!r} is a number YAML may have rewritten (1.10 reads as 1.1): quote it")
        return None
    if not isinstance(raw, str):
        bad(where, f"must be text, not {'null' if raw is None else type(raw).__name__}")
        return None
    if not raw.strip():
        bad(where, "is empty")
        return None
    if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", raw):
        bad(where, "must not contain control characters")
        return None
    return raw


def _check_columns(value: Any, bad: Any) -> dict[str, Any]:
    """The fixed columns, each value as the manifest's text (``input`` and ``image_input`` as JSON)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        bad("columns", "must be a mapping of column → the value of every row (model, aspect_ratio...)")
        return {}
    out: dict[str, Any] = {}
    for name, raw in value.items():
        field = f"columns.{name}"
        if not isinstance(name, str) or not name.strip():
            bad(field, "a column name must be non-empty text")
        elif name in REQUIRED_COLUMNS:
            bad(field, f"{name!r} is what the template makes: it cannot be a fixed column")
        elif name in RESERVED_NAMES and name not in _MANIFEST_COLUMNS:
            bad(field, f"{name!r} is a column the catalog writes; rename it")
        elif name == "input" and isinstance(raw, dict):
            out[name] = json.dumps(raw, ensure_ascii=False, sort_keys=True)
        elif name == "image_input" and isinstance(raw, list):
            out[name] = json.dumps(raw, ensure_ascii=False)
        elif isinstance(raw, bool):
            bad(field, f"{raw!r} is a boolean (YAML reads yes/no/on/off/true/false so): quote it")
        elif isinstance(raw, int | float | str) and str(raw).strip():
            out[name] = str(raw)
        else:
            bad(field, "must be non-empty text or a number (input: a mapping; image_input: a list)")
    return out


def _seed(value: Any, field: str, bad: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        bad(field, f"must be a whole number (the same seed gives the same rows), not {value!r}")
        return None
    return value


def _check_sample(value: Any, bad: Any) -> Sample | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        bad("sample", "must be a mapping: {size: N, seed: S}")
        return None
    for key in value:
        if key not in ("size", "seed"):
            bad(f"sample.{key}", "is not a sample key (size, seed)")
    size = value.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        bad("sample.size", f"must be a whole number of rows, at least 1, not {size!r}")
        size = None
    seed = _seed(value.get("seed"), "sample.seed", bad)
    return Sample(size, seed) if size is not None and seed is not None else None


def _check_split(value: Any, bad: Any) -> Split | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        bad("split", "must be a mapping: {seed: S, fractions: {train: 0.8, val: 0.1, test: 0.1}}")
        return None
    for key in value:
        if key not in ("seed", "fractions", "column"):
            bad(f"split.{key}", "is not a split key (seed, fractions, column)")
    seed = _seed(value.get("seed"), "split.seed", bad)
    column = value.get("column", DEFAULT_SPLIT_COLUMN)
    if not isinstance(column, str) or not SLOT_NAME.match(column):
        bad("split.column", f"must be a column name (letters, digits and _), not {column!r}")
        column = None
    elif column in _MANIFEST_COLUMNS or column in RESERVED_NAMES:
        bad("split.column", f"{column!r} is a manifest or catalog column: name another")
        column = None
    fractions = value.get("fractions")
    parsed: list[tuple[str, float]] = []
    if not isinstance(fractions, dict) or not fractions:
        bad("split.fractions", "must be a mapping split → fraction of the rows, e.g. {train: 0.8, val: 0.2}")
    else:
        for name, fraction in fractions.items():
            where = f"split.fractions.{name}"
            if not isinstance(name, str) or not name.strip() or _has_control(name):
                bad(where, "a split's name must be non-empty text")
            elif isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
                bad(where, f"must be a number in (0, 1], not {fraction!r}")
            else:
                parsed.append((name, float(fraction)))
        if len(parsed) == len(fractions) and abs(sum(f for _, f in parsed) - 1) > 1e-9:
            bad("split.fractions", f"must sum to 1, not {sum(f for _, f in parsed):g}")
            parsed = []
    if seed is None or column is None or not parsed or len(parsed) != len(fractions or {}):
        return None
    return Split(tuple(parsed), seed, column)


def _has_control(text: str) -> bool:
    return bool(re.search(r"[\x00-\x1f\x7f]", text))


def _check_id_prefix(value: Any, bad: Any) -> str:
    if value == "" or value is None:
        return ""
    if not isinstance(value, str) or not ID_PREFIX.match(value):
        bad("id_prefix", f"must be 1-60 of A-Z a-z 0-9 _ - (starting with a letter or digit), not {value!r}")
        return ""
    return value


# -- expanding and writing ---------------------------------------------------------------------------------


def expand_template(
    template: str | Template,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_combinations: int = DEFAULT_MAX_COMBINATIONS,
    base_dir: str | None = None,
) -> pd.DataFrame:
    """The manifest rows of a template (a file's path, or a :class:`Template`), checked as the pipeline
    will check them: the rows :func:`~.manifest.validate_manifest` accepts, as the template wrote them.

    ``base_dir`` is the folder local image files are relative to (the manifest's; default: the
    current folder).

    Raises:
        TemplateError: the template is invalid (every problem, by field), including a fixed column
            that every row has wrong (a model that does not take ``resolution``: one problem,
            ``columns.resolution``, not one per row).
        ManifestError: some rows are not valid manifest rows (a prompt too long for the model...):
            every problem, by row, id and field.
    """
    source = template if isinstance(template, str) else "template"
    if isinstance(template, str):
        template = load_template(template, max_rows=max_rows, max_combinations=max_combinations)
    df = template.expand()
    try:
        validate_manifest(df, source=source, base_dir=base_dir)
    except ManifestError as exc:
        raise _by_template_field(exc.problems, template, len(df), source) from None
    return df


def _by_template_field(problems: list[Problem], template: Template, rows: int, source: str) -> ManifestError:
    """The manifest's problems, those of a fixed column that every row has as one template problem
    (``columns.<name>``, no row), the others by row; a TemplateError when none is left by row."""
    rows_of: dict[tuple[str, str], set[int | None]] = {}
    for p in problems:
        rows_of.setdefault((p.field, p.message), set()).add(p.row)
    fixed = {
        key
        for key, seen in rows_of.items()
        if key[0].split(".", 1)[0] in template.columns and len(seen) == rows
    }
    out = [
        Problem(None, None, f"columns.{field}", message)
        for field, message in rows_of
        if (field, message) in fixed
    ]
    left = [p for p in problems if (p.field, p.message) not in fixed]
    if not left:
        return TemplateError(out, source)
    return ManifestError(out + left, source)


def write_manifest_file(df: pd.DataFrame, path: str) -> None:
    """Write ``df`` to ``path`` (``.csv``, or ``.parquet``/``.pq``) atomically, with the store's
    writer (:func:`~.store.write_atomically`): a reader never sees half a manifest.

    Raises:
        ValueError: ``path`` has another extension.
        OSError: the folder does not exist or cannot be written.
    """
    lower = path.lower()
    if not lower.endswith((".csv", ".parquet", ".pq")):
        raise ValueError(f"{path}: the output must end in .csv, .parquet or .pq")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder")
    if lower.endswith(".csv"):
        data = df.to_csv(index=False).encode("utf-8")
    else:
        buf = io.BytesIO()
        df.astype("string").to_parquet(buf, index=False)
        data = buf.getvalue()
    write_atomically(path, data)


def summary(template: Template, df: pd.DataFrame) -> str:
    """``12 rows (3 animal × 2 style × 2 light), split train 9, val 2, test 1``: what was expanded."""
    sizes = " × ".join(f"{len(v)} {n}" for n, v in template.slots.items()) or "no slot"
    line = f"{len(df)} rows"
    line += f" (a sample of {template.combinations}: {sizes})" if template.sample else f" ({sizes})"
    if template.split is not None:
        counts = df[template.split.column].value_counts().to_dict()
        line += ", split " + ", ".join(f"{n} {counts.get(n, 0)}" for n, _ in template.split.fractions)
    return line
