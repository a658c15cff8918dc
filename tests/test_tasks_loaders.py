"""Loaders: every file format, the checks on every split, label inference and fingerprints."""

import csv
import json
import re

import pytest

from tasks import Example, TaskError, TaskSpec, build_spec, data_fingerprint, load_split, read_records

ROWS = [
    {"text": "Oil prices jump", "label": "business"},
    {"text": "Café wins the cup", "label": "sports"},  # non-ASCII survives every format
    {"text": "New exoplanet found", "label": "science"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path, rows, delimiter=","):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path, rows):
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path)
    return path


def write_dataset(path, rows):
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


WRITERS = {
    "train.jsonl": write_jsonl,
    "train.json": write_jsonl,
    "train.csv": write_csv,
    "train.tsv": lambda p, rows: write_csv(p, rows, delimiter="\t"),
    "train.parquet": write_parquet,
    "train_ds": write_dataset,
}


def one_line_error(call, *args, **kwargs):
    """Run call, expect a TaskError, return its (single-line) message."""
    with pytest.raises(TaskError) as info:
        call(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("filename", list(WRITERS))
def test_every_format_reads_the_same_records(tmp_path, filename):
    path = WRITERS[filename](tmp_path / filename, ROWS)
    assert read_records(path) == ROWS


def test_json_file_may_hold_a_list(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    assert read_records(str(path)) == ROWS


def test_blank_lines_bom_and_crlf_are_tolerated(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a", "label": "x"}\r\n\r\n{"text": "b", "label": "y"}\r\n')
    assert read_records(path) == [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]


def test_csv_keeps_quoted_newlines_and_reports_the_starting_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('text,label\n"two\nlines",a\nok,b,extra\n', encoding="utf-8")
    msg = one_line_error(read_records, path, split="train")
    assert f"train file {str(path)!r} line 4: 3 values but the header has 2 columns" in msg
    path.write_text('text,label\n"two\nlines",a\n', encoding="utf-8")
    assert read_records(path) == [{"text": "two\nlines", "label": "a"}]


@pytest.mark.parametrize("filename", list(WRITERS))
def test_same_content_gives_same_fingerprint_in_every_format(tmp_path, filename):
    reference = build_spec("t", write_jsonl(tmp_path / "ref.jsonl", ROWS))
    spec = build_spec("t", WRITERS[filename](tmp_path / filename, ROWS))
    assert spec.fingerprint == reference.fingerprint
    assert re.fullmatch(r"[0-9a-f]{64}", spec.fingerprint)


def test_integer_labels_read_the_same_from_json_csv_and_parquet(tmp_path):
    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": 0}, {"text": "fine", "label": 10}]
    specs = [
        build_spec("t", write_jsonl(tmp_path / "a.jsonl", rows)),
        build_spec("t", write_csv(tmp_path / "a.csv", rows)),
        build_spec("t", write_parquet(tmp_path / "a.parquet", rows)),
    ]
    assert {s.labels for s in specs} == {("0", "1", "10")}  # numeric order, not "0", "1", "10" by luck
    assert len({s.fingerprint for s in specs}) == 1
    assert [e.label for e in load_split(specs[1], "train")] == ["1", "0", "10"]


# ----------------------------------------------------------------------------- fingerprints


def test_fingerprint_changes_with_any_text_or_label_but_not_with_spacing_or_nfc():
    base = {"train": [Example("Café wins", "sports")], "test": [Example("Oil up", "business")]}
    fp = data_fingerprint(base)
    assert data_fingerprint({"train": [Example("  Cafe\u0301 wins\n", " sports")], "test": base["test"]}) == fp
    assert data_fingerprint({"train": [Example("Cafe wins", "sports")], "test": base["test"]}) != fp
    assert data_fingerprint({"train": [Example("Café wins", "world")], "test": base["test"]}) != fp
    assert data_fingerprint({"train": base["train"], "dev": base["test"]}) != fp  # split names count
    assert data_fingerprint({"test": base["test"], "train": base["train"]}) == fp  # dict order does not
    assert data_fingerprint({"train": [Example("a", "x", text_pair="b")]}) != data_fingerprint(
        {"train": [Example("a\nb", "x")]}
    )


def test_changed_file_content_changes_the_spec_fingerprint(tmp_path):
    first = build_spec("t", write_jsonl(tmp_path / "a.jsonl", ROWS)).fingerprint
    edited = [dict(ROWS[0], text="Oil prices slump"), *ROWS[1:]]
    assert build_spec("t", write_jsonl(tmp_path / "a.jsonl", edited)).fingerprint != first
    relabelled = [dict(ROWS[0], label="world"), *ROWS[1:]]
    assert build_spec("t", write_jsonl(tmp_path / "a.jsonl", relabelled)).fingerprint != first


# ----------------------------------------------------------------------------- build_spec


def test_build_spec_infers_sorted_labels_and_makes_paths_absolute(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "test.jsonl", ROWS[:2])
    monkeypatch.chdir(tmp_path)
    spec = build_spec("news", "train.jsonl", test="test.jsonl", description="d")
    assert spec == TaskSpec(
        name="news",
        train=str(tmp_path / "train.jsonl"),
        test=str(tmp_path / "test.jsonl"),
        labels=("business", "science", "sports"),
        description="d",
        fingerprint=spec.fingerprint,
    )
    assert load_split(spec, "test") == [Example("Oil prices jump", "business"), Example("Café wins the cup", "sports")]


def test_given_labels_keep_their_order_and_check_every_split(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    spec = build_spec("news", train, labels=["sports", "business", "science", "world"])
    assert spec.labels == ("sports", "business", "science", "world")
    msg = one_line_error(build_spec, "news", train, labels=["sports", "business"])
    assert f"train file {str(train)!r} line 3: label 'science' is not in the task's label set" in msg
    assert "('sports', 'business')" in msg


def test_dev_label_missing_from_train_is_refused(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "Peace talks resume", "label": "world"}])
    msg = one_line_error(build_spec, "news", train, dev=dev)
    assert f"dev file {str(dev)!r} line 1: label 'world' is not in the task's label set" in msg
    assert "('business', 'science', 'sports')" in msg


def test_text_pairs_and_joined_fields(tmp_path):
    rows = [{"premise": "A dog runs.", "hypothesis": "An animal moves.", "extra": "x", "y": "yes"},
            {"premise": "A cat sleeps.", "hypothesis": "A cat runs.", "extra": "z", "y": "no"}]
    path = write_jsonl(tmp_path / "nli.jsonl", rows)
    pair = build_spec("nli", path, text_fields=("premise", "hypothesis"), label_field="y")
    assert load_split(pair, "train")[0] == Example("A dog runs.", "yes", text_pair="An animal moves.")
    three = build_spec("nli", path, text_fields=("premise", "hypothesis", "extra"), label_field="y")
    assert load_split(three, "train")[1] == Example("A cat sleeps.\nA cat runs.\nz", "no")


def test_generation_task_keeps_the_target_text_and_infers_no_labels(tmp_path):
    rows = [{"prompt": "2+2=", "answer": " 4"}, {"prompt": "Capital of Peru?", "answer": "Lima"}]
    spec = build_spec("qa", write_jsonl(tmp_path / "qa.jsonl", rows), kind="generation",
                      text_fields=("prompt",), label_field="answer")
    assert spec.labels == ()
    assert load_split(spec, "train") == [Example("2+2=", "4"), Example("Capital of Peru?", "Lima")]
    msg = one_line_error(build_spec, "qa", tmp_path / "qa.jsonl", kind="generation",
                         text_fields=("prompt",), label_field="answer", labels=["4"])
    assert "labels apply only to classification tasks" in msg


def test_build_spec_never_writes(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    before = sorted(p.name for p in tmp_path.iterdir())
    build_spec("news", train)
    one_line_error(build_spec, "news", train, dev=tmp_path / "missing.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ----------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    missing = tmp_path / "x.jsonl"
    assert one_line_error(build_spec, "t", missing) == f"train file {str(missing)!r} does not exist; check the path"
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    msg = one_line_error(build_spec, "t", train, test=tmp_path / "nope.csv")
    assert msg == f"test file {str(tmp_path / 'nope.csv')!r} does not exist; check the path"


def test_empty_split(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    (tmp_path / "dev.jsonl").write_text("\n\n", encoding="utf-8")
    msg = one_line_error(build_spec, "t", train, dev=tmp_path / "dev.jsonl")
    assert msg == f"dev file {str(tmp_path / 'dev.jsonl')!r} has no examples; a split needs at least one row"
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    assert "has no examples" in one_line_error(build_spec, "t", tmp_path / "empty.csv")


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": }\n', encoding="utf-8")
    msg = one_line_error(build_spec, "t", path)
    assert msg.startswith(f"train file {str(path)!r} line 3: not valid JSON (Expecting value at column 24)")
    assert msg.endswith("write one JSON object per line")


def test_a_json_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('["a", "x"]\n', encoding="utf-8")
    assert "line 1: expected a JSON object" in one_line_error(read_records, path)


def test_missing_field_names_field_file_line_and_fields_present(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [*ROWS, {"sentence": "no text", "label": "x"}])
    msg = one_line_error(build_spec, "t", path)
    assert msg == (
        f"train file {str(path)!r} line 4: missing field 'text' (fields present: 'sentence', 'label'); "
        "pass --text-field NAME to use another column"
    )
    csv_path = write_csv(tmp_path / "train.csv", [{"text": "a", "target": "x"}])
    msg = one_line_error(build_spec, "t", csv_path)
    assert "line 2: missing field 'label' (fields present: 'text', 'target'); pass --label-field NAME" in msg
    pq_path = write_parquet(tmp_path / "train.parquet", [{"text": "a", "target": "x"}])
    assert "train.parquet' row 1: missing field 'label'" in one_line_error(build_spec, "t", pq_path)


def test_null_and_empty_values(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": None, "label": "x"}])
    assert "line 1: field 'text' is null; fill it in or drop the row" in one_line_error(build_spec, "t", path)
    path = write_csv(tmp_path / "train.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": " "}])
    assert "line 3: field 'label' is empty; every row needs a label" in one_line_error(build_spec, "t", path)
    path = write_jsonl(tmp_path / "list.jsonl", [{"text": ["a"], "label": "x"}])
    assert "field 'text' is list ['a']; expected text or a number" in one_line_error(build_spec, "t", path)


def test_label_outside_the_label_set(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    msg = one_line_error(build_spec, "t", path, labels=("business", "sports"))
    assert msg == (
        f"train file {str(path)!r} line 3: label 'science' is not in the task's label set "
        "('business', 'sports'); fix the row, or list every label with --labels "
        "(default: the labels of the train split)"
    )


def test_one_label_is_not_a_classification_task(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}])
    assert "has only the label 'x'; a classification task needs at least two" in one_line_error(build_spec, "t", path)
    assert "name one class" in one_line_error(build_spec, "t", path, labels=["x"])


def test_unsupported_extension_lists_the_supported_ones(tmp_path):
    path = tmp_path / "train.xlsx"
    path.write_bytes(b"PK")
    msg = one_line_error(build_spec, "t", path)
    assert msg.startswith(f"train file {str(path)!r} has unsupported extension '.xlsx'; supported: .jsonl, .json, .csv")
    assert "datasets.Dataset.save_to_disk" in msg


def test_folders_that_are_not_one_dataset(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    msg = one_line_error(read_records, tmp_path / "dd")
    assert "holds a DatasetDict with splits ['train']; pass one split's folder" in msg
    (tmp_path / "plain").mkdir()
    assert "was not written by datasets.Dataset.save_to_disk" in one_line_error(read_records, tmp_path / "plain")


def test_damaged_parquet_and_non_utf8_text(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    assert "is not a readable parquet file" in one_line_error(read_records, tmp_path / "bad.parquet")
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    assert "is not UTF-8 text" in one_line_error(read_records, tmp_path / "latin.csv")


def test_unsafe_name_is_refused_before_reading(tmp_path):
    assert "task name '../x' is not allowed" in one_line_error(build_spec, "../x", tmp_path / "missing.jsonl")


def test_load_split_of_an_absent_split(tmp_path):
    spec = build_spec("t", write_jsonl(tmp_path / "train.jsonl", ROWS))
    assert one_line_error(load_split, spec, "dev") == "task 't' has no dev split; register it with --dev PATH"
