"""Task profiles at registration, related tasks, routing and warm starts through the registry."""
import shutil
import warnings

import pytest

from continual.config import TrainConfig
from continual.train import train_task
from continual.warm_start import WarmStartError
from registry import AdapterRegistry, Related, RegistryError, Route
from tasks.errors import ContinualWarning

FAST = TrainConfig(max_steps=2, batch_size=8, max_length=32, eval_batch_size=32)


@pytest.fixture(scope="module")
def reg(new_registry):
    return new_registry("index-store", demo_sizes={"train": 64, "dev": 8, "test": 8})


def test_related_tasks_best_first_without_itself(reg):
    related = reg.related("demo-topic", k=5)
    assert [type(r) for r in related] == [Related, Related]
    assert {r.task for r in related} == {"demo-sentiment", "demo-intent"}
    assert related[0].score >= related[1].score


def test_route_picks_the_task_an_input_belongs_to(reg):
    texts = ["set an alarm for six thirty tomorrow morning", "remind me: add eggs and milk to my shopping list",
             "the striker scored twice as the team won the derby", "the central bank raised interest rates again"]
    routes = reg.route(texts, k=2)
    assert all(len(r) == 2 and all(isinstance(x, Route) for x in r) for r in routes)
    assert all(r[0].score >= r[1].score for r in routes)
    assert [r[0].task for r in routes] == ["demo-intent", "demo-intent", "demo-topic", "demo-topic"]
    [diag] = reg.diagnose_routes(texts[:1])
    assert diag.task == "demo-intent" and diag.runner_up in {"demo-topic", "demo-sentiment"} and diag.margin > 0


def test_index_is_rebuilt_with_a_warning_when_stale_or_corrupt(reg):
    reg.route(["hello"])  # make sure the cache exists
    cache = reg.index.cache_dir
    fresh = AdapterRegistry(reg.store.tracking_uri.removeprefix("sqlite:///").rsplit("/", 1)[0])
    (cache / "routes.faiss").write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning):
        assert fresh.route(["set an alarm"])[0][0].task == "demo-intent"
    shutil.rmtree(cache)
    assert AdapterRegistry(fresh.store.artifact_root.rsplit("/", 1)[0]).related("demo-topic")  # rebuilt from the registry
    assert (cache / "router.json").exists()


def test_warm_start_copies_adapter_and_records_lineage(reg, tiny_base_dir):
    source = train_task(reg, "demo-topic", FAST, base_model=str(tiny_base_dir))
    warm = train_task(reg, "demo-sentiment", FAST.replace(max_steps=1, learning_rate=1e-9),
                      base_model=str(tiny_base_dir), init_from="demo-topic")
    assert warm.version.tags["parent_adapter"] == source.version.ref
    assert warm.version.tags["warm_start_head"] == "fresh"  # label sets differ
    # With a negligible learning rate the adapter weights stay the source's.
    from modeling.kinds import get_kind

    kind = get_kind("lora")
    a, b = kind.slot_state_dict(source.model, source.slot), kind.slot_state_dict(warm.model, warm.slot)
    assert all((a[k] - b[k]).abs().max() < 1e-6 for k in a)


def test_warm_start_keeps_the_copied_head_of_a_same_label_task(new_registry, tiny_base_dir):
    """task-embedding starts its head by a linear probe (head_init=auto), but a head copied from a task with
    the same labels already answers the task: training starts from it, as the lineage tag says."""
    import dataclasses

    reg = new_registry("head-copy-store", demo_sizes={"train": 32, "dev": 8, "test": 8})
    reg.register_task(dataclasses.replace(reg.task("demo-topic"), name="demo-topic-again", fingerprint=""))
    source = train_task(reg, "demo-topic", FAST, method="task-embedding", base_model=str(tiny_base_dir))
    warm = train_task(reg, "demo-topic-again", FAST.replace(max_steps=1, learning_rate=1e-9), method="task-embedding",
                      base_model=str(tiny_base_dir), init_from="demo-topic")
    assert warm.version.tags["warm_start_head"] == "copied"
    src, got = source.model.heads[source.slot], warm.model.heads[warm.slot]
    assert (src.weight - got.weight).abs().max() < 1e-6 and (src.bias - got.bias).abs().max() < 1e-6


def test_warm_start_errors(reg, tiny_base_dir):
    with pytest.raises(WarmStartError, match="names the task being trained"):
        train_task(reg, "demo-intent", FAST, base_model=str(tiny_base_dir), init_from="demo-intent")
    with pytest.raises(RegistryError, match="no task named 'nope'"):
        train_task(reg, "demo-intent", FAST, base_model=str(tiny_base_dir), init_from="nope")
    train_task(reg, "demo-sentiment", FAST, base_model=str(tiny_base_dir))
    with pytest.raises(WarmStartError, match="its adapter is 'lora' but this training uses 'adapter'"):
        train_task(reg, "demo-intent", FAST, method="adapter", base_model=str(tiny_base_dir),
                   init_from="demo-sentiment")


def test_routes_and_profiles_are_immune_to_adapters_loaded_for_inference(reg):
    """A prediction leaves its adapter active on the shared inference encoder; routing must not see it."""
    import numpy as np

    texts = ["set an alarm for six", "the striker scored twice", "shares rose after earnings", "great value, works"]
    before = reg.index.route(texts, k=3)
    # a MiniLM adapter (the router's own base model) with large weights, so an active slot would move vectors
    config = TrainConfig(max_steps=2, batch_size=8, max_length=32, eval_batch_size=32, learning_rate=0.5)
    result = train_task(reg, "demo-topic", config)
    reg.load(result.version.ref).predict(texts)  # the slot stays active on the shared encoder
    after = reg.index.route(texts, k=3)
    assert [[(r.task, round(r.score, 6)) for r in rs] for rs in after] == \
        [[(r.task, round(r.score, 6)) for r in rs] for rs in before]
    from tasks.loaders import Example

    sample = [Example(t, "sports") for t in texts]
    fresh = AdapterRegistry(reg.store.tracking_uri.removeprefix("sqlite:///").rsplit("/", 1)[0])
    np.testing.assert_array_equal(reg.index.profile_task(sample, ["sports"])[0],
                                  fresh.index.profile_task(sample, ["sports"])[0])


def test_related_sources_keep_only_tasks_clearly_above_the_mean_cosine():
    """Order 1 of cl_benchmark as registered (centred profiles: every cosine is negative): amazon's only
    related task is yelp; a distant nearest task is no source; a negative margin takes every task."""
    from types import SimpleNamespace

    from continual.warm_start import related_sources
    from retrieval.routing import Related

    scores = {"amazon": [Related("yelp", -0.044), Related("agnews", -0.428), Related("dbpedia", -0.436)],
              "dbpedia": [Related("agnews", -0.43), Related("amazon", -0.436), Related("yelp", -0.443)]}
    fake = SimpleNamespace(related=lambda task, k: scores[task][:k], tasks=lambda: [1, 2, 3, 4])
    assert related_sources(fake, "amazon", 0.1)[0] == ["yelp"]  # +0.26 above the mean; the others -0.13
    close, why = related_sources(fake, "dbpedia", 0.1)
    assert close == [] and "nearest: agnews, +0.01 above the mean cosine, below related_margin=0.1" in why
    assert related_sources(fake, "dbpedia", -1)[0] == ["agnews", "amazon", "yelp"]
    pair = SimpleNamespace(related=lambda task, k: [Related("yelp", -1.0)], tasks=lambda: [1, 2])
    with pytest.warns(ContinualWarning, match="only one other task \\(yelp\\) is registered"):
        assert related_sources(pair, "amazon", 0.1)[0] == ["yelp"]
