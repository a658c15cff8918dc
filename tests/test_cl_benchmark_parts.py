"""Parts of bench/cl_benchmark.py that need no benchmark data: the scored samples (a replication with
`--split fresh-test` never scores an example the reported test runs scored; choosing settings with `--split dev`
never scores an early-stopping example) and how `--set` values are recorded."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cl_benchmark_under_test", ROOT / "bench" / "cl_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def fake_task(folder: Path, name: str, n: int) -> None:
    d = folder / name
    d.mkdir(parents=True)
    (d / "labels.json").write_text(json.dumps(["a", "b"]))
    for split in ("train", "dev", "test"):
        rows = [json.dumps({"text": f"{name} {split} example {i}", "label": "ab"[i % 2]}) for i in range(n)]
        (d / f"{split}.jsonl").write_text("\n".join(rows) + "\n")


def scored(bench, data: Path, out: Path, split: str, n: int) -> set[str]:
    sizes = {**bench.SIZES["default"], "test": n}
    (spec,) = bench.write_tasks(data, ["toy"], sizes, out, split)
    return {json.loads(l)["text"] for l in Path(spec.test).read_text().splitlines()}


def test_fresh_test_is_disjoint_from_the_reported_test_sample(bench, tmp_path):
    fake_task(tmp_path / "data", "toy", 400)
    reported = scored(bench, tmp_path / "data", tmp_path / "a", "test", bench.SIZES["default"]["test"])
    fresh = scored(bench, tmp_path / "data", tmp_path / "b", "fresh-test", 200)
    assert len(reported) == bench.SIZES["default"]["test"] and len(fresh) == 200
    assert not reported & fresh
    assert all(" test " in t for t in fresh)


def test_dev_scoring_leaves_out_the_early_stopping_examples(bench, tmp_path):
    fake_task(tmp_path / "data", "toy", 400)
    (spec,) = bench.write_tasks(tmp_path / "data", ["toy"], bench.SIZES["default"], tmp_path / "a", "dev")
    early = {json.loads(l)["text"] for l in Path(spec.dev).read_text().splitlines()}
    held_out = {json.loads(l)["text"] for l in Path(spec.test).read_text().splitlines()}
    assert early and held_out and not early & held_out
    assert all(" dev " in t for t in held_out)


def test_set_records_numbers_as_numbers_and_names_as_given(bench):
    # YAML 1.1 reads 1e-3 as a string; the report must record the number.  A name stays what the CLI makes of it.
    got = bench.parse_overrides(["learning_rate=1e-3", "ewc_lambda=1E4", "share_group=inf", "r=8"])
    assert got == {"learning_rate": 1e-3, "ewc_lambda": 1e4, "share_group": "inf", "r": 8}
    assert isinstance(got["r"], int)


def test_bench_silences_library_noise_but_not_the_projects_warnings(bench):
    # A bench run prints figures; a ContinualWarning (a stale task index, a warm start that found nothing)
    # is part of what it must still say, while library tips and deprecations stay out.
    import warnings

    from tasks.errors import ContinualWarning

    with warnings.catch_warnings(record=True) as caught:
        bench.quiet()
        warnings.showwarning = lambda *a, **k: caught.append(a)  # record what would be printed
        warnings.warn("ours", ContinualWarning)
        warnings.warn_explicit("tip", UserWarning, "x.py", 1, module="lightning.pytorch.trainer")
        warnings.warn("old api", DeprecationWarning)
    assert [str(a[0]) for a in caught] == ["ours"]


def test_unscored_test_holds_no_example_a_report_or_a_replication_scored(bench, tmp_path):
    n = bench.SIZES["default"]["test"] + bench.REPLICATION_SCORED + 50
    fake_task(tmp_path / "data", "toy", n)
    reported = scored(bench, tmp_path / "data", tmp_path / "a", "test", bench.SIZES["default"]["test"])
    replicated = scored(bench, tmp_path / "data", tmp_path / "b", "fresh-test", bench.REPLICATION_SCORED)
    unscored = scored(bench, tmp_path / "data", tmp_path / "c", "unscored-test", bench.SIZES["default"]["test"])
    assert len(unscored) == 50 and not unscored & (reported | replicated)
    assert all(" test " in t for t in unscored)


def test_unscored_test_refuses_a_task_with_nothing_left(bench, tmp_path):
    fake_task(tmp_path / "data", "toy", bench.SIZES["default"]["test"] + bench.REPLICATION_SCORED)
    with pytest.raises(SystemExit, match="no test example left"):
        scored(bench, tmp_path / "data", tmp_path / "c", "unscored-test", 10)


def test_every_shared_factor_row_is_held_to_the_shared_target(bench):
    """A shared-factor row (the warm-started shared-B included) is judged against lora - 1 at half its bytes."""
    def entry(acc, nbytes):
        return {"n_seeds": 3, "mean": {"acc": acc}, "se": {}, "per_task_bytes": nbytes}

    names = {row.name for row in bench.ROWS}
    assert set(bench.SHARED_FACTOR) <= names and "shared-b-lora(B frozen random FFN r16 warm start)" in names
    for acc, met in ((0.641, True), (0.639, False)):
        report = {"methods": {"lora": entry(0.65, 294_912),
                              "shared-b-lora(B frozen random FFN r16 warm start)": entry(acc, 147_456)}}
        (verdict,) = [c for c in bench.criteria(report)
                      if c["criterion"].startswith("shared-b-lora(B frozen random FFN r16 warm")]
        assert verdict["met"] is met
    over = {"methods": {"lora": entry(0.65, 294_912),
                        "shared-b-lora(B frozen random FFN r16 warm start)": entry(0.66, 147_457)}}
    assert not [c for c in bench.criteria(over) if c["criterion"].startswith("shared-b")][0]["met"]


def test_the_difference_to_lora_is_paired_by_seed(bench, tmp_path):
    """ACC − lora pairs each seed with lora's same seed (same examples), leaves out seeds lora lacks, and is shown."""
    def run(acc):
        return {"acc": acc, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0, "R": [[acc]], "seconds": 1.0}

    row = {"method": "shared-b-lora", "note": "", "seeds": {"0": run(0.60), "1": run(0.70), "2": run(0.50)}}
    lora = {"method": "lora", "note": "", "seeds": {"0": run(0.62), "1": run(0.69)}}
    settings = {"tasks": ["toy"], "base_model": "tiny", "sizes": {"train": 1, "dev": 1, "test": 1}, "split": "dev",
                "quick": False,
                "config": {"max_epochs": 1, "batch_size": 1, "learning_rate": 1e-3, "max_length": 8,
                           "precision": "auto"},
                "threads": 1, "cpu_count": 2}
    report = {"order": 1, "settings": settings, "methods": {"lora": lora, "other": row}}
    bench.write_report(report, tmp_path / "r.json")
    paired = report["methods"]["other"]["minus_lora"]
    assert paired["per_seed"] == pytest.approx({"0": -0.02, "1": 0.01})
    assert paired["mean"] == pytest.approx(-0.005) and paired["se"] == pytest.approx(0.015)
    assert "| other | 60.0 ± 5.8 | -0.5 ± 1.5 |" in (tmp_path / "r.md").read_text()
