"""Reading a task's data files into examples, and building a checked ``TaskSpec`` from them.

Every problem a user can fix (missing file, bad line, missing column, unknown label) raises a
one-line ``TaskError`` that names the file, the line or row, and what to do. pandas, pyarrow and
datasets are imported inside the functions that need them: most commands never read parquet, and
importing ``datasets`` alone costs seconds.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from tasks.errors import TaskError
from tasks.fingerprint import data_fingerprint
from tasks.spec import DEFAULT_FIELDS, MESSAGES_FIELD, TaskSpec, validate_task_name

__all__ = ["Example", "build_spec", "load_split", "read_records"]

SUPPORTED_FORMATS = (
    ".jsonl, .json, .csv, .tsv, .parquet, or a folder written by datasets.Dataset.save_to_disk"
)

# A record together with where it came from ("line 7", "row 3"), for error messages.
_Located = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Example:
    """One input/label pair as the trainer sees it.

    Generation tasks: `text` is the prompt and `label` the completion.  A chat example also keeps its
    prompt turns in `messages` ((role, content) pairs, rendered with the tokenizer's chat template);
    its `text` is then the turns as "role: content" lines, which routing and fingerprints read.
    """

    text: str
    label: str  # class name, or the target text (completion) for generation tasks
    text_pair: str | None = None  # second text field, for pair tasks (two text fields)
    messages: tuple[tuple[str, str], ...] | None = None  # chat turns before the completion (generation)


def _what(path: str | Path, split: str | None) -> str:
    # repr() quotes the path and escapes odd characters, which keeps every message on one line.
    return f"{split} file {str(path)!r}" if split else f"file {str(path)!r}"


# ----------------------------------------------------------------------------- reading files


def read_records(path: str | Path, *, split: str | None = None) -> list[dict[str, Any]]:
    """Read every record of a data file (or ``save_to_disk`` folder) as a list of dicts.

    ``split`` ("train", ...) only makes error messages say which split the file is.
    """
    return [record for _, record in _read_located(Path(path), split)]


def _read_located(path: Path, split: str | None) -> _Located:
    what = _what(path, split)
    if not path.exists():
        raise TaskError(f"{what} does not exist; check the path")
    if path.is_dir():
        return _read_dataset_dir(path, what)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv", ".parquet"):
        raise TaskError(
            f"{what} has unsupported extension {suffix or '(none)'!r}; supported: {SUPPORTED_FORMATS}"
        )
    if suffix == ".parquet":
        return _read_parquet(path, what)
    try:
        # utf-8-sig: spreadsheet programs often start CSV files with a byte-order mark.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise TaskError(f"{what} is not UTF-8 text; save it with UTF-8 encoding") from None
    if suffix in (".csv", ".tsv"):
        return _parse_delimited(text, what, "," if suffix == ".csv" else "\t")
    if suffix == ".json" and text.lstrip().startswith("["):
        return _parse_json_array(text, what)  # a .json file may also hold one list of objects
    return _parse_json_lines(text, what)


def _as_record(value: Any, what: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        kind = {list: "a list", str: "a string"}.get(type(value), f"the value {value!r}")
        raise TaskError(
            f"{what} {where}: expected a JSON object such as {{\"text\": ..., \"label\": ...}}, got {kind}"
        )
    return value


def _parse_json_lines(text: str, what: str) -> _Located:
    rows: _Located = []
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and friends.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, say) are not records
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskError(
                f"{what} line {lineno}: not valid JSON ({err.msg} at column {err.colno}); "
                "write one JSON object per line"
            ) from None
        rows.append((f"line {lineno}", _as_record(value, what, f"line {lineno}")))
    return rows


def _parse_json_array(text: str, what: str) -> _Located:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise TaskError(
            f"{what} line {err.lineno}: not valid JSON ({err.msg} at column {err.colno})"
        ) from None
    # The text starts with "[", so a successful parse is a list.
    return [(f"item {i}", _as_record(v, what, f"item {i}")) for i, v in enumerate(values, start=1)]


def _parse_delimited(text: str, what: str, delimiter: str) -> _Located:
    # The csv module keeps every value a string, so labels 0/1 read the same as JSON's "0"/"1"
    # after conversion, and empty cells stay "" instead of pandas' NaN floats.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: _Located = []
    try:
        header = next(reader, None)
        if header is None:
            return rows
        header = [name.strip() for name in header]
        end = reader.line_num
        for values in reader:
            # A quoted value can span lines; report the line where the record starts.
            start, end = end + 1, reader.line_num
            if not values:
                continue  # blank line
            if len(values) != len(header):
                raise TaskError(
                    f"{what} line {start}: {len(values)} values but the header has {len(header)} "
                    f"columns {header}; quote values that contain {delimiter!r}"
                )
            rows.append((f"line {start}", dict(zip(header, values))))
    except csv.Error as err:
        raise TaskError(f"{what} line {reader.line_num}: {err}; check the quoting") from None
    return rows


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _read_parquet(path: Path, what: str) -> _Located:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        raise TaskError(f"{what} is not a readable parquet file ({_first_line(err)})") from None
    return [(f"row {i}", r) for i, r in enumerate(table.to_pylist(), start=1)]


def _read_dataset_dir(path: Path, what: str) -> _Located:
    if (path / "dataset_dict.json").exists():
        names = sorted(p.name for p in path.iterdir() if p.is_dir())
        example = str(path / names[0]) if names else str(path / "train")
        raise TaskError(
            f"{what} holds a DatasetDict with splits {names}; pass one split's folder, e.g. {example!r}"
        )
    if not (path / "state.json").exists():
        raise TaskError(
            f"{what} is a folder but was not written by datasets.Dataset.save_to_disk "
            f"(no state.json); supported: {SUPPORTED_FORMATS}"
        )
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises many types for a damaged folder
        raise TaskError(f"{what} is not a readable datasets folder ({_first_line(err)})") from None
    return [(f"row {i}", r) for i, r in enumerate(dataset.to_list(), start=1)]


# ----------------------------------------------------------------------------- records -> examples


def _to_str(value: Any, what: str, where: str, field: str) -> str:
    if isinstance(value, str):
        return value
    # An integer label stored as float (pandas does this when a column had a gap) reads as "1",
    # the same as the JSON 1 and the CSV "1", so the label set and fingerprint do not change.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (bool, int, float)):
        return str(value)
    raise TaskError(
        f"{what} {where}: field {field!r} is {type(value).__name__} {value!r}; expected text or a number"
    )


def _field(record: dict[str, Any], field: str, what: str, where: str, flag: str) -> str:
    if field not in record:
        present = ", ".join(repr(k) for k in record) or "none"
        raise TaskError(
            f"{what} {where}: missing field {field!r} (fields present: {present}); "
            f"pass {flag} NAME to use another column"
        )
    value = record[field]
    if value is None:
        raise TaskError(f"{what} {where}: field {field!r} is null; fill it in or drop the row")
    return _to_str(value, what, where, field)


def _example(texts: Sequence[str], label: str) -> Example:
    if len(texts) == 2:  # a sentence pair (NLI, paraphrase): the tokenizer encodes it as a pair
        return Example(text=texts[0], label=label, text_pair=texts[1])
    # One field as is; three or more have no pair encoding, so one text with a line per field.
    return Example(text="\n".join(texts), label=label)


def _chat_example(record: dict[str, Any], spec: TaskSpec, what: str, where: str) -> Example:
    """A `messages` record: the turns before the completion, and the completion (the record's label
    field when it has one, else the last turn, which must then be the assistant's)."""
    turns = record.get(MESSAGES_FIELD)
    if not isinstance(turns, list) or not turns:
        raise TaskError(f"{what} {where}: field {MESSAGES_FIELD!r} must be a non-empty list of "
                        f"{{\"role\": ..., \"content\": ...}} objects, got {turns!r}")
    pairs = []
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
            raise TaskError(f"{what} {where}: each message needs string fields 'role' and 'content', got {turn!r}")
        pairs.append((turn["role"], turn["content"]))
    if spec.label_field in record:
        completion = _field(record, spec.label_field, what, where, "--label-field")
    elif pairs[-1][0] == "assistant" and len(pairs) > 1:
        (_, completion), pairs = pairs[-1], pairs[:-1]
    else:
        raise TaskError(f"{what} {where}: no completion: give a {spec.label_field!r} field or end "
                        f"{MESSAGES_FIELD!r} with an assistant turn after the prompt turns")
    text = "\n".join(f"{role}: {content}" for role, content in pairs)
    return Example(text=text, label=completion, messages=tuple(pairs))


def _check_generation(example: Example, spec: TaskSpec, what: str, where: str) -> Example:
    if not example.text.strip() or (example.messages is not None and not any(c.strip() for _, c in example.messages)):
        fields = MESSAGES_FIELD if example.messages is not None else ", ".join(map(repr, spec.text_fields))
        raise TaskError(f"{what} {where}: the prompt ({fields}) is empty; every row of a generation task needs a prompt")
    return example


def _read_examples(spec: TaskSpec, split: str, path: str) -> list[Example]:
    what = _what(path, split)
    rows = _read_located(Path(path), split)
    if not rows:
        raise TaskError(f"{what} has no examples; a split needs at least one row")
    valid = set(spec.labels)
    examples = []
    chat = spec.kind == "generation" and spec.text_fields == (MESSAGES_FIELD,)
    for where, record in rows:
        if chat:
            example = _chat_example(record, spec, what, where)
            label = unicodedata.normalize("NFC", example.label).strip()
            if not label:
                raise TaskError(f"{what} {where}: the completion is empty; every row needs a completion")
            examples.append(_check_generation(replace(example, label=label), spec, what, where))
            continue
        texts = [_field(record, f, what, where, "--text-field") for f in spec.text_fields]
        # Labels are identifiers: normalise them so "pos " and "pos" are one class.
        label = _field(record, spec.label_field, what, where, "--label-field")
        label = unicodedata.normalize("NFC", label).strip()
        if not label:
            raise TaskError(f"{what} {where}: field {spec.label_field!r} is empty; every row needs a label")
        if valid and label not in valid:
            raise TaskError(
                f"{what} {where}: label {label!r} is not in the task's label set "
                f"({', '.join(map(repr, spec.labels))}); fix the row, or list every label with --labels "
                "(default: the labels of the train split)"
            )
        example = _example(texts, label)
        examples.append(_check_generation(example, spec, what, where) if spec.kind == "generation" else example)
    return examples


def load_split(spec: TaskSpec, split: str) -> list[Example]:
    """Read and check one split ("train", "dev", "test") of a task."""
    path = spec.split_path(split)
    if path is None:
        raise TaskError(f"task {spec.name!r} has no {split} split; register it with --{split} PATH")
    return _read_examples(spec, split, path)


# ----------------------------------------------------------------------------- building a spec


def _sort_labels(labels: Iterable[str]) -> tuple[str, ...]:
    # Numeric labels in numeric order ("2" before "10"), so class ids match the usual 0..n-1;
    # anything else alphabetically. Both are stable across runs and file formats.
    labels = set(labels)
    if all(re.fullmatch(r"[+-]?\d+", label) for label in labels):
        return tuple(sorted(labels, key=lambda label: (int(label), label)))
    return tuple(sorted(labels))


def _abs(path: str | os.PathLike[str] | None) -> str | None:
    # abspath, not resolve(): keep the user's symlinks, only anchor relative paths.
    return None if path is None else os.path.abspath(os.path.expanduser(os.fspath(path)))


def build_spec(
    name: str,
    train: str | os.PathLike[str],
    dev: str | os.PathLike[str] | None = None,
    test: str | os.PathLike[str] | None = None,
    *,
    kind: str = "classification",
    text_fields: Sequence[str] | None = None,
    label_field: str | None = None,
    labels: Sequence[str] | None = None,
    description: str = "",
) -> TaskSpec:
    """Check every given split and return the task's spec with labels and fingerprint filled in.

    Labels are inferred from train when ``labels`` is None or empty; otherwise every split is
    checked against them. Fields not given default per kind (``tasks.spec.DEFAULT_FIELDS``: ``text``
    and ``label``; ``prompt`` and ``completion`` for generation; ``messages`` for chat turns).
    Raises ``TaskError`` on any problem and never writes anything.
    """
    validate_task_name(name)
    default_text, default_label = DEFAULT_FIELDS.get(kind, DEFAULT_FIELDS["classification"])
    text_fields = text_fields or default_text
    label_field = label_field or default_label
    if isinstance(labels, str):
        labels = (labels,)
    given = tuple(unicodedata.normalize("NFC", str(label)).strip() for label in labels or ())
    spec = TaskSpec(
        name=name,
        train=_abs(train),
        dev=_abs(dev),
        test=_abs(test),
        kind=kind,
        text_fields=text_fields,
        label_field=label_field,
        labels=given,
        description=description,
    )
    if spec.kind == "classification" and len(given) == 1:
        raise TaskError(f"labels {list(given)!r} name one class; a classification task needs at least two")

    splits = {"train": load_split(spec, "train")}
    if spec.kind == "classification" and not given:
        inferred = _sort_labels(ex.label for ex in splits["train"])
        if len(inferred) < 2:
            raise TaskError(
                f"train file {spec.train!r} has only the label {inferred[0]!r}; a classification task "
                "needs at least two (check --label-field, or use --kind generation)"
            )
        spec = replace(spec, labels=inferred)
    for split in ("dev", "test"):
        if spec.split_path(split) is not None:
            splits[split] = load_split(spec, split)
    return replace(spec, fingerprint=data_fingerprint(splits))
