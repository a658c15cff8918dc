"""TaskSpec and task names: validation, JSON round trip, split lookup."""

import json

import pytest

from tasks import TASK_KINDS, ContinualError, TaskError, TaskSpec, validate_task_name


@pytest.mark.parametrize("name", ["agnews", "sst2-sentiment", "a", "Task_1-v2", "9lives", "a" * 64])
def test_valid_names_pass_through(name):
    assert validate_task_name(name) == name


@pytest.mark.parametrize(
    "name", ["../x", "a b", "", "a/b", "..", "a..b", "a.b", "-lead", ".hidden", "a" * 65, "tab\tname", "x\ny"]
)
def test_unsafe_names_are_refused_naming_value_and_rule(name):
    with pytest.raises(TaskError) as info:
        validate_task_name(name)
    msg = str(info.value)
    assert f"task name {name!r} is not allowed" in msg
    assert "letters, digits" in msg and "'_' or '-'" in msg
    assert "\n" not in msg  # one line, even for a name holding a newline


def test_non_string_name_is_refused():
    with pytest.raises(TaskError, match="task name must be a string, got int 5"):
        validate_task_name(5)


def test_task_error_is_a_continual_error():
    # The CLI catches ContinualError at its boundary; every task problem must be one.
    assert issubclass(TaskError, ContinualError)
    assert TASK_KINDS == ("classification", "generation")


def _spec(**kw):
    base = dict(name="news", train="/data/train.jsonl", test="/data/test.jsonl", labels=("a", "b"))
    return TaskSpec(**{**base, **kw})


def test_to_dict_is_json_and_round_trips():
    spec = _spec(text_fields=("premise", "hypothesis"), description="NLI", fingerprint="ab" * 32)
    d = spec.to_dict()
    assert d["text_fields"] == ["premise", "hypothesis"] and d["labels"] == ["a", "b"]
    back = TaskSpec.from_dict(json.loads(json.dumps(d)))
    assert back == spec
    assert isinstance(back.labels, tuple) and isinstance(back.text_fields, tuple)
    hash(back)  # frozen and hashable after the round trip


def test_from_dict_refuses_unknown_and_missing_keys():
    with pytest.raises(TaskError, match=r"unknown task spec field\(s\) \['colour'\]; valid fields: name, train"):
        TaskSpec.from_dict({**_spec().to_dict(), "colour": "red"})
    with pytest.raises(TaskError, match=r"missing field\(s\) \['train'\]"):
        TaskSpec.from_dict({"name": "news"})


def test_from_dict_validates_the_name():
    with pytest.raises(TaskError, match="task name '../x' is not allowed"):
        TaskSpec.from_dict({**_spec().to_dict(), "name": "../x"})


def test_split_path():
    spec = _spec()
    assert spec.split_path("train") == "/data/train.jsonl"
    assert spec.split_path("dev") is None
    assert spec.split_path("test") == "/data/test.jsonl"
    with pytest.raises(TaskError, match="unknown split 'validation'; valid splits: train, dev, test"):
        spec.split_path("validation")


def test_a_bare_string_text_field_is_one_field():
    assert _spec(text_fields="sentence").text_fields == ("sentence",)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"kind": "regression"}, "unknown task kind 'regression'; valid kinds: classification, generation (--kind)"),
        ({"text_fields": ()}, "text fields [] must name at least one column; pass --text-field NAME"),
        ({"text_fields": ("a", "a")}, "text fields ['a', 'a'] repeat a column"),
        ({"label_field": "text"}, "field 'text' is both a text field and the label field"),
        ({"labels": ("a", "a")}, "labels ['a', 'a'] repeat a label"),
        ({"kind": "generation"}, "is a generation task but has labels ['a', 'b']"),
        ({"train": ""}, "task 'news' needs a train file; pass --train PATH"),
    ],
)
def test_spec_validates_itself(kw, message):
    with pytest.raises(TaskError) as info:
        _spec(**kw)
    assert message in str(info.value)
