"""The built-in demo suite: deterministic, clearly different tasks, no leaks between splits."""

import re
from collections import Counter

import pytest

from tasks import DEMO_TASKS, TaskError, load_split, write_demo_suite
from tasks.spec import SPLITS


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, write_demo_suite(out, seed=0)


def test_full_suite_has_three_tasks_with_different_label_sets_and_default_sizes(suite):
    out, specs = suite
    assert [s.name for s in specs] == list(DEMO_TASKS) and len(DEMO_TASKS) >= 3
    assert len({s.labels for s in specs}) == len(specs)
    assert {len(s.labels) for s in specs} == {2, 4, 5}
    for spec in specs:
        assert spec.kind == "classification" and spec.description and len(spec.fingerprint) == 64
        for split, n in {"train": 400, "dev": 100, "test": 200}.items():
            assert spec.split_path(split) == str(out / spec.name / f"{split}.jsonl")
            examples = load_split(spec, split)
            assert len(examples) == n
            counts = Counter(e.label for e in examples)  # stratified: balanced within one example
            assert set(counts) == set(spec.labels) and max(counts.values()) - min(counts.values()) <= 1


def test_no_text_is_in_two_splits_of_a_task(suite):
    _, specs = suite
    for spec in specs:
        texts = [e.text for split in SPLITS for e in load_split(spec, split)]
        assert len(texts) == len(set(texts))


def test_each_label_has_several_phrasings(suite):
    # No word appears in every train text of a label, so no single word gives a label away.
    _, specs = suite
    for spec in specs:
        for label in spec.labels:
            texts = [e.text.lower() for e in load_split(spec, "train") if e.label == label]
            common = set.intersection(*(set(re.findall(r"[a-z']+", t)) for t in texts))
            assert common == set(), (spec.name, label, common)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    sizes = {"train": 20, "dev": 5, "test": 10}
    first = write_demo_suite(tmp_path / "a", seed=3, sizes=sizes)
    again = write_demo_suite(tmp_path / "b", seed=3, sizes=sizes)
    other = write_demo_suite(tmp_path / "c", seed=4, sizes=sizes)
    for name in DEMO_TASKS:
        for split in SPLITS:
            a, b = (tmp_path / d / name / f"{split}.jsonl" for d in "ab")
            assert a.read_bytes() == b.read_bytes()
    assert [s.fingerprint for s in first] == [s.fingerprint for s in again]
    assert all(f.fingerprint != o.fingerprint for f, o in zip(first, other))


def test_small_sizes_and_a_subset_of_tasks(tmp_path):
    (spec,) = write_demo_suite(tmp_path, sizes={"train": 12, "test": 6}, tasks=["demo-intent"])
    assert spec.dev is None and not (tmp_path / "demo-intent" / "dev.jsonl").exists()
    assert len(load_split(spec, "train")) == 12 and len(load_split(spec, "test")) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-intent"]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"tasks": ["demo-weather"]}, "unknown demo task 'demo-weather'; valid demo tasks: demo-topic"),
        ({"sizes": {"train": 0}}, "need a positive 'train' size"),
        ({"sizes": {"train": 5, "validation": 2}}, "unknown split(s) ['validation'] in sizes"),
        ({"sizes": {"train": 10**6}, "tasks": ["demo-sentiment"]}, "cannot make 500000 different 'negative' texts"),
    ],
)
def test_bad_arguments(tmp_path, kw, message):
    with pytest.raises(TaskError) as info:
        write_demo_suite(tmp_path, **kw)
    assert message in str(info.value)
