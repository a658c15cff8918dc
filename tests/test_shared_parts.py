"""Shared parts as registry objects: separate `continual train` calls of one share group share its part."""
import pytest
import torch
from typer.testing import CliRunner

from continual.cli import app

runner = CliRunner()
TEXTS = ["the match went to extra time", "shares rose after the earnings call", "set an alarm for six"]
FAST = ["--set", "max_steps=2", "--set", "batch_size=8", "--set", "max_length=32", "--set", "learning_rate=0.05",
        "--set", "r=2", "--set", "precision=32"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reg(new_registry):
    return new_registry("shared-parts", demo_sizes={"train": 24, "dev": 8, "test": 8})


def train(reg, base, task, *extra, method="shared-b-lora"):
    root = str(reg.tracking_uri.removeprefix("sqlite:///").rsplit("/", 1)[0])
    result = runner.invoke(app, ["train", task, "--method", method, "--base-model", str(base), *FAST, *extra,
                                 "--store", root])
    return result


def probs(reg, ref, shared="recorded"):
    return torch.tensor(reg.load(ref, shared=shared, precision="32").predict_proba(TEXTS))


def test_separate_trainings_share_the_groups_part_and_follow_its_lineage(reg, tiny_base_dir, monkeypatch):
    assert train(reg, tiny_base_dir, "demo-topic").exit_code == 0
    topic = reg.resolve("demo-topic")
    assert topic.tags["shared_part"] == "shared-b-lora--default:1"  # the group's first training creates v1
    before = probs(reg, topic.ref)

    # train_shared=false: starts from the group's current B, leaves it bit-identical, records the same version
    out = train(reg, tiny_base_dir, "demo-sentiment", "--set", "train_shared=false")
    assert out.exit_code == 0, out.output
    assert reg.resolve("demo-sentiment").tags["shared_part"] == "shared-b-lora--default:1"
    assert reg.shared_versions("shared-b-lora--default") == [1]
    torch.testing.assert_close(probs(reg, topic.ref, shared="current"), before, rtol=0, atol=0)

    # train_shared=true: starts from v1, trains B, registers v2 with its lineage; earlier tasks keep v1
    assert train(reg, tiny_base_dir, "demo-intent", "--set", "train_shared=true").exit_code == 0
    intent = reg.resolve("demo-intent")
    assert intent.tags["shared_part"] == "shared-b-lora--default:2"
    v2 = reg.store.get_version("shared-b-lora--default", 2)
    assert v2.tags["parent_shared"] == "shared-b-lora--default:1"
    torch.testing.assert_close(probs(reg, topic.ref), before, rtol=0, atol=0)  # recorded: still v1
    assert not torch.allclose(probs(reg, topic.ref, shared="current"), before)  # current: the group's v2

    # `continual adapters versions` shows which shared version each task uses
    root = str(reg.tracking_uri.removeprefix("sqlite:///").rsplit("/", 1)[0])
    from continual import cli

    monkeypatch.setattr(cli.console, "width", 200)  # a wide terminal: rich would elide the column otherwise
    shown = runner.invoke(app, ["adapters", "versions", "demo-sentiment", "--store", root])
    assert "shared-b-lora--default:1" in shown.output

    # an explicit older version to start from
    assert train(reg, tiny_base_dir, "demo-sentiment", "--set", "shared_version=1",
                 "--set", "train_shared=false").exit_code == 0
    assert reg.resolve("demo-sentiment").tags["shared_part"] == "shared-b-lora--default:1"


def test_bad_shared_version_and_mismatched_warm_start_get_one_line(reg, tiny_base_dir):
    out = train(reg, tiny_base_dir, "demo-topic", "--set", "shared_version=9")
    assert out.exit_code == 1 and "has no version 9" in out.output and "Traceback" not in out.output
    out = train(reg, tiny_base_dir, "demo-intent", "--set", "share_group=other", "--init-from", "demo-topic")
    assert out.exit_code == 1 and "share_group" in out.output and len(out.output.strip().splitlines()) <= 2
    out = train(reg, tiny_base_dir, "demo-intent", "--set", "share_group=fresh", "--set", "shared_version=1")
    assert out.exit_code == 1 and "shared-b-lora--fresh has no version 1 (versions: none)" in out.output


def test_hyper_lora_keeps_earlier_tasks_of_its_group_across_trainings(reg, tiny_base_dir):
    """Each `continual train` of a hyper-lora group trains a bank column of its own (earlier tasks answer
    bit-identically under the group's newest version); once the bank is full a task shares a column, and the
    anchors that came with the shared part let the output regulariser keep the earlier task (without it, it moves)."""
    hyper = ["--set", "max_steps=30", "--set", "learning_rate=0.01"]
    assert train(reg, tiny_base_dir, "demo-topic", *hyper, method="hyper-lora").exit_code == 0
    topic = reg.resolve("demo-topic")
    assert topic.tags["shared_part"] == "hyper-lora--default:1"
    before = probs(reg, topic.ref)
    assert train(reg, tiny_base_dir, "demo-intent", *hyper, method="hyper-lora").exit_code == 0
    assert reg.resolve("demo-intent").tags["shared_part"] == "hyper-lora--default:2"
    torch.testing.assert_close(probs(reg, topic.ref, shared="current"), before, rtol=0, atol=0)

    full = [*hyper, "--set", "share_group=full", "--set", "task_embedding_dim=1"]  # one column: later tasks share it
    assert train(reg, tiny_base_dir, "demo-topic", *full, method="hyper-lora").exit_code == 0
    before = probs(reg, reg.resolve("demo-topic").ref)
    moved = {}
    for task, strength in (("demo-intent", "100"), ("demo-sentiment", "0")):
        out = train(reg, tiny_base_dir, task, *full, "--set", "shared_version=1", "--set", f"output_reg={strength}",
                    method="hyper-lora")
        assert out.exit_code == 0, out.output
        version = int(reg.resolve(task).tags["shared_part"].rsplit(":", 1)[1])
        assert reg.shared_part("hyper-lora", "full", version).state.keys() >= {"anchor.demo-topic", f"anchor.{task}"}
        moved[strength] = float((probs(reg, reg.resolve("demo-topic").ref, shared="current") - before).abs().max())
    assert moved["0"] > 3 * moved["100"], moved
