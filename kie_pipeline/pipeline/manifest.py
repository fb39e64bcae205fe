"""Reading and validating a manifest of prompts (CSV or Parquet), before any credit is spent.

One row per image: ``id`` and ``prompt`` required; ``batch`` (the partition; default
``"default"``), ``model``, ``aspect_ratio``, ``resolution``,
``output_format``, ``image_input`` optional; every other column is carried through unchanged.
Validation collects *every* problem, each naming the row, the id and the field.

Image fields may name local files (relative to the manifest's folder, or absolute): each is checked
here (see :mod:`.uploads`) and enters the request as ``local:sha256:<hex>``, its content hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import pandas as pd

from kie_pipeline.client import DEFAULT_MODEL, KieValidationError, get_model
from kie_pipeline.client.registry import MODELS, ModelSpec, is_http_url
from kie_pipeline.client.transport import dumps

from .schema import RESERVED_NAMES
from .uploads import LocalImage, LocalImageError, inspect_image, resolve_path, swap_refs

REQUIRED_COLUMNS = ("id", "prompt")
#: Named columns for the fields most models share; each model maps them to its own field names
#: (kie_pipeline.client.registry). Anything else goes in the ``input`` column, a JSON object.
NAMED_INPUT_COLUMNS = ("aspect_ratio", "resolution", "output_format", "image_input")
INPUT_COLUMNS = (*NAMED_INPUT_COLUMNS, "input")
#: The batch (partition) of every row of a manifest without a ``batch`` column.
DEFAULT_BATCH = "default"
#: Partition keys appear in paths and URLs: keep them to a safe alphabet.
BATCH_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_ID_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ManifestOptions:
    """How one pipeline reads its manifest: the column that partitions it and the defaults of empty
    cells. The defaults fill only what a row leaves empty; a row's own value always wins."""

    #: The column whose values are the partitions (it becomes ``batch`` in every table).
    partition_column: str = "batch"
    #: The model of rows whose ``model`` is empty (None: the built-in default, nano-banana-pro).
    default_model: str | None = None
    #: Defaults of input fields: a named column (``resolution``, ``aspect_ratio``, ...) or a model's
    #: own field (Kie's name, e.g. ``duration``). Each applies to the rows whose model has that field.
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def problems(self) -> list[str]:
        """What is wrong with these options themselves (checked before any row)."""
        out = []
        if self.default_model is not None:
            try:
                get_model(self.default_model)
            except KieValidationError as exc:
                out.append(f"default_model: {exc.message}")
        known = set(NAMED_INPUT_COLUMNS) | {
            name for spec in MODELS.values() for name in spec.input.model_fields if name != "prompt"
        }
        out += [
            f"defaults: {key!r} is neither a manifest column ({', '.join(NAMED_INPUT_COLUMNS)}) nor a "
            "field of any model"
            for key in self.defaults
            if key not in known
        ]
        return out

    def fill(self, inp: dict[str, Any], spec: ModelSpec) -> None:
        """Add the defaults that ``spec`` takes and the row left empty to ``inp``."""
        for key, value in self.defaults.items():
            name = spec.columns.get(key) if key in NAMED_INPUT_COLUMNS else key
            if name and name in spec.input.model_fields and inp.get(name) is None:
                inp[name] = value


@dataclass(frozen=True)
class Problem:
    """One invalid value: where it is and what is wrong."""

    row: int | None
    id: str | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "manifest"
        if self.id:
            where += f" (id {self.id!r})"
        return f"{where}, field {self.field!r}: {self.message}"


class ManifestError(ValueError):
    """The manifest is invalid; ``problems`` lists every bad row and field."""

    def __init__(self, problems: list[Problem], source: str = "manifest") -> None:
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(
            f"{source} is invalid ({len(problems)} problem(s)); nothing was submitted:\n{shown}{more}"
        )


def read_manifest(path: str) -> pd.DataFrame:
    """Read a CSV or Parquet manifest (by extension) from a path or fsspec URL.

    CSV cells are read as text, exactly as written (no NA guessing), as UTF-8.
    """
    lower = path.lower()
    try:
        if lower.endswith((".parquet", ".pq")):
            with fsspec.open(path, "rb") as fh:
                # Nullable dtypes: an int column with gaps stays Int64 instead of becoming float64.
                return pd.read_parquet(fh, dtype_backend="numpy_nullable")
        if lower.endswith((".csv", ".csv.gz", ".tsv")):
            with fsspec.open(path, "rb", compression="infer") as fh:
                raw = fh.read()
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                line = raw[: exc.start].count(b"\n") + 1
                raise ManifestError(
                    [Problem(None, None, "encoding", f"invalid UTF-8 at byte {exc.start} (line {line})")],
                    path,
                ) from None
            sep = "\t" if lower.endswith(".tsv") else _csv_separator(text)
            return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ManifestError([Problem(None, None, "path", f"no manifest at {path}")], path) from None
    except ManifestError:
        raise
    except (ValueError, OSError) as exc:  # pandas.errors.ParserError, ArrowInvalid are ValueErrors
        raise ManifestError([Problem(None, None, "format", f"cannot be read: {exc}")], path) from None
    raise ManifestError([Problem(None, None, "path", "must end in .csv, .tsv, .csv.gz or .parquet")], path)


def _csv_separator(text: str) -> str:
    """``,`` unless the header line has semicolons and no comma (a European spreadsheet export)."""
    header = text.split("\n", 1)[0]
    return ";" if ";" in header and "," not in header else ","


def _text(value: Any) -> str | None:
    """A cell as text, or None when empty (NaN/None/"")."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    if not isinstance(value, str):
        return None if pd.isna(value) else str(value)
    return value if value.strip() else None


def parse_image_input(value: Any) -> list[Any]:
    """``image_input`` as a JSON list, a ``|``-separated string, or a list already."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist"):  # numpy arrays from Parquet list columns
        return list(value.tolist())
    text = _text(value)
    if text is None:
        return []
    text = text.strip()
    if text.startswith("["):
        parsed = json.loads(text)
        if not isinstance(parsed, list):
            raise ValueError("must be a JSON list")
        return parsed
    return [part.strip() for part in text.split("|") if part.strip()]


def request_key(row_id: str, model: str, input: dict[str, Any]) -> str:
    """The key of a row's request: same id + same model + same (normalized) input → same key."""
    return hashlib.sha256(dumps({"id": row_id, "model": model, "input": input}).encode()).hexdigest()[:32]


def _check_id(value: Any) -> str | None:
    """The id as text, or None if missing; raises ValueError with the reason when unsafe."""
    text = _text(value)
    if text is None:
        return None
    if len(text) > MAX_ID_CHARS:
        raise ValueError(f"is {len(text)} characters long; at most {MAX_ID_CHARS}")
    if "/" in text or "\\" in text or ".." in text:
        raise ValueError("must not contain '/', '\\\\' or '..' (ids never become paths)")
    if _CONTROL.search(text):
        raise ValueError("must not contain control characters")
    return text


def validate_manifest(
    df: pd.DataFrame,
    source: str = "manifest",
    base_dir: str | None = None,
    options: ManifestOptions | None = None,
) -> pd.DataFrame:
    """Validate every row and return the normalized manifest.

    The result has the columns ``id, batch, model, prompt, aspect_ratio, resolution, output_format,
    image_input`` (a JSON list; local files as their resolved paths), ``input_json`` (the exact
    request input; local files as ``local:sha256:<hex>``), ``request_key``, ``row_number`` (1-based
    data row) and ``local_images`` (JSON: each local reference → its file), then the manifest's
    extra columns unchanged. Local image paths are relative to ``base_dir`` (default: the current
    folder; :func:`load_manifest` passes the manifest's folder). ``options`` name the partition
    column (renamed ``batch``) and the defaults of empty cells.

    Raises:
        ManifestError: listing every problem (row number, id, field), if there is any.
    """
    options = options or ManifestOptions()
    problems: list[Problem] = [Problem(None, None, "options", p) for p in options.problems()]
    column = options.partition_column
    if column != "batch":
        if column not in df.columns:
            problems.append(Problem(None, None, column, "the partition column is missing"))
        elif "batch" in df.columns:
            problems.append(Problem(None, None, "batch", f"clashes with the partition column {column!r}"))
        else:
            df = df.rename(columns={column: "batch"})
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    for col in missing:
        problems.append(Problem(None, None, col, "required column is missing"))
    if len(df) == 0:
        problems.append(Problem(None, None, "rows", "the manifest has no rows"))
    for col in df.columns:
        if not isinstance(col, str):
            problems.append(Problem(None, None, str(col), "column names must be text"))
    if problems:
        raise ManifestError(problems, source)

    if "batch" not in df.columns:
        # Most first manifests are just id,prompt: one batch, one partition.
        df = df.assign(batch=DEFAULT_BATCH)
    extras = [c for c in df.columns if c not in (*REQUIRED_COLUMNS, "batch", "model", *INPUT_COLUMNS)]
    for col in extras:
        if col in RESERVED_NAMES:
            problems.append(Problem(None, None, col, "is a column the catalog writes; rename it"))

    rows: list[dict[str, Any]] = []
    first_row_of_id: dict[str, int] = {}
    base = base_dir if base_dir is not None else os.getcwd()
    # Each file is read and hashed once, however many rows name it.
    checked: dict[tuple[str, int], LocalImage | LocalImageError] = {}
    for i, rec in enumerate(df.to_dict("records"), start=1):
        row_problems: list[Problem] = []

        def bad(
            field: str, message: str, rid: str | None = None, _i: int = i, _out: list[Problem] = row_problems
        ) -> None:
            _out.append(Problem(_i, rid, field, message))

        try:
            rid = _check_id(rec.get("id"))
        except ValueError as exc:
            rid = None
            bad("id", str(exc), str(rec.get("id"))[:60])
        else:
            if rid is None:
                bad("id", "is empty")
            elif rid in first_row_of_id:
                bad("id", f"duplicates the id of row {first_row_of_id[rid]}", rid)
            else:
                first_row_of_id[rid] = i

        batch = _text(rec.get("batch"))
        if batch is None:
            bad(column, "is empty", rid)
        elif not BATCH_PATTERN.match(batch):
            bad(column, f"{batch[:40]!r} must be 1-100 of A-Z a-z 0-9 . _ - (it names a partition)", rid)

        model = _text(rec.get("model")) or options.default_model or DEFAULT_MODEL
        prompt = rec.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            bad("prompt", "is empty", rid)
        normalized: dict[str, Any] = {}
        local: dict[str, LocalImage] = {}
        shown: dict[str, list[Any]] = {}
        try:
            spec = get_model(model)
        except KieValidationError as exc:
            bad("model", exc.message, rid)
        else:
            inp, sources = _row_input(rec, spec.columns, prompt, lambda f, m, _r=rid: bad(f, m, _r))
            options.fill(inp, spec)
            if not row_problems:
                local, shown = _local_images(
                    inp, spec, base, checked, lambda f, m, _r=rid, _s=sources: bad(_s.get(f, f), m, _r)
                )
            if not row_problems:
                # Kie's fields take URLs: validate with a stand-in URL per local file, then put the
                # content reference back (the registry stays strict for the client and the emulator).
                stand_in = {ref: f"https://local-image.invalid/{img.sha256}" for ref, img in local.items()}
                try:
                    normalized = swap_refs(
                        spec.validate(swap_refs(inp, stand_in)), {v: k for k, v in stand_in.items()}
                    )
                except KieValidationError as exc:
                    bad(sources.get(exc.field or "", "input"), exc.message, rid)
        problems.extend(row_problems)
        if row_problems:
            continue
        assert rid is not None and batch is not None
        paths = {ref: img.path for ref, img in local.items()}
        rows.append(
            {
                "id": rid,
                "batch": batch,
                "model": model,
                "prompt": prompt,
                # The named columns as the model understood them (None where it has no such field),
                # local images as their files: the content references are in input_json.
                **{
                    c: _named_value({**normalized, **shown}, spec.columns.get(c)) for c in NAMED_INPUT_COLUMNS
                },
                "input_json": dumps(normalized),
                "request_key": request_key(rid, model, normalized),
                "row_number": i,
                "local_images": dumps(paths),
                **{c: rec.get(c) for c in extras},
            }
        )
    if problems:
        raise ManifestError(problems, source)
    out = pd.DataFrame(rows)
    for col in extras:  # keep the extra columns' original (nullable) dtypes
        out[col] = df[col].array
    return out


def _row_input(
    rec: dict[str, Any], columns: Any, prompt: Any, bad: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    """A row's request input from its ``input`` JSON and its named columns, and where each field came
    from (so that a problem names the manifest's column, not Kie's field)."""
    inp: dict[str, Any] = {}
    sources: dict[str, str] = {"prompt": "prompt"}
    raw = _text(rec.get("input"))
    if raw is not None:
        try:
            parsed = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            bad("input", f"is not valid JSON ({exc})")
            parsed = {}
        if not isinstance(parsed, dict):
            bad("input", "must be a JSON object of the model's fields")
            parsed = {}
        inp.update(parsed)
        sources.update({k: f"input.{k}" for k in parsed})
    inp["prompt"] = prompt
    for col in NAMED_INPUT_COLUMNS:
        raw_value = rec.get(col)
        if col == "image_input":
            try:
                value: Any = parse_image_input(raw_value) or None
            except ValueError as exc:
                bad(col, f"is not a JSON list or '|'-separated URLs or paths ({exc})")
                continue
        else:
            text = _text(raw_value)
            value = text.strip() if text is not None else None
        if value is None:
            continue
        field = columns.get(col)
        if field is None:
            bad(col, "is not a field of this model; put the model's own fields in the input column (JSON)")
        elif field in inp and sources.get(field, "").startswith("input."):
            bad(col, f"sets {field!r}, which the input column sets too")
        else:
            inp[field] = value
            sources[field] = col
    return inp, sources


def _local_images(
    inp: dict[str, Any],
    spec: ModelSpec,
    base_dir: str,
    checked: dict[tuple[str, int], LocalImage | LocalImageError],
    bad: Any,
) -> tuple[dict[str, LocalImage], dict[str, list[Any]]]:
    """Check every local file in the model's image fields and replace it in ``inp`` by its content
    reference; returns reference → image, and each field's images as shown in the catalog (local
    files as their resolved paths). Problems go to ``bad(field, message)``."""
    found: dict[str, LocalImage] = {}
    shown: dict[str, list[Any]] = {}
    for field, max_bytes in spec.image_fields.items():
        values = inp.get(field)
        if not isinstance(values, list):
            continue
        out, shown[field] = [], []
        for value in values:
            if not isinstance(value, str) or not value.strip() or is_http_url(value):
                out.append(value)  # URLs (and what the model refuses anyway) go to the registry
                shown[field].append(value)
                continue
            path = resolve_path(value.strip(), base_dir)
            shown[field].append(path)
            key = (path, max_bytes)
            if key not in checked:
                try:
                    checked[key] = inspect_image(path, max_bytes)
                except LocalImageError as exc:
                    checked[key] = exc
            result = checked[key]
            if isinstance(result, LocalImageError):
                bad(field, f"local image {value!r}: {result}")
                out.append(value)
                continue
            found[result.ref] = result
            out.append(result.ref)
        inp[field] = out
    return found, shown


def _named_value(normalized: dict[str, Any], field: str | None) -> Any:
    value = normalized.get(field) if field else None
    return json.dumps(value) if isinstance(value, list) else value


def load_manifest(path: str, options: ManifestOptions | None = None) -> pd.DataFrame:
    """Read and validate a manifest file: the normalized manifest, or a :class:`ManifestError`.

    Local image paths in it are relative to the manifest's folder."""
    folder = path.rsplit("/", 1)[0] if "/" in path else "."
    return validate_manifest(read_manifest(path), source=path, base_dir=folder, options=options)
