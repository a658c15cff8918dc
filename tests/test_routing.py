"""TaskRouter (routing inputs, related tasks, persistence) and the embedding functions under it."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from retrieval.profiles import (
    default_routing_layer,
    encode_layers,
    encode_texts,
    fit_whitening,
    label_embedding,
    moments,
    route_scores,
    routing_vectors,
    sample_texts,
    task_profiles,
)
from retrieval.index import IndexConfig
from retrieval.routing import Related, Route, RouteDiagnosis, RouterConfig, TaskRouter, TextRouter

D = 24


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def world():
    """Five tasks as separated clusters; t0 and t1 are one family (nearby centres)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, D)) * 2
    centres[1] = centres[0] + 0.7 * rng.standard_normal(D)

    def draw(i: int, n: int) -> np.ndarray:
        return unit(centres[i] + rng.standard_normal((n, D)))

    return {"draw": draw, "names": [f"t{i}" for i in range(5)]}


def make_router(world, n: int = 80, **config) -> TaskRouter:
    router = TaskRouter(D, RouterConfig(**config))
    for i, name in enumerate(world["names"]):
        router.add_task(name, world["draw"](i, n))
    return router


def test_route_picks_the_right_task(world):
    router = make_router(world)
    for i, name in enumerate(world["names"]):
        routes = router.route(world["draw"](i, 30))
        assert len(routes) == 30 and all(len(r) == 1 and isinstance(r[0], Route) for r in routes)
        accuracy = np.mean([r[0].task == name for r in routes])
        assert accuracy >= (0.8 if i < 2 else 0.97), (name, accuracy)  # t0/t1 overlap by design


def test_route_is_best_first_and_k_is_capped(world):
    router = make_router(world)
    for routes in router.route(world["draw"](3, 10), k=3):
        assert [r.task for r in routes][0] == "t3" and len(routes) == 3
        assert all(a.score >= b.score for a, b in zip(routes, routes[1:]))
    assert len(router.route(world["draw"](3, 1), k=50)[0]) == 5


def test_diagnose_gives_runner_up_and_margin(world):
    router = make_router(world)
    q = world["draw"](0, 5)
    for diag, top2 in zip(router.diagnose(q), router.route(q, k=2)):
        assert isinstance(diag, RouteDiagnosis)
        assert (diag.task, diag.runner_up) == (top2[0].task, top2[1].task)
        assert diag.margin == pytest.approx(top2[0].score - top2[1].score) and diag.margin >= 0
    single = TaskRouter(D)
    single.add_task("only", world["draw"](2, 20))
    (d,) = single.diagnose(world["draw"](2, 1))
    assert d.task == "only" and d.runner_up is None and d.margin == float("inf")


def test_router_matches_the_pure_routing_rule(world):
    router = make_router(world)
    q = np.concatenate([world["draw"](i, 10) for i in range(5)])
    scores = route_scores(q, router.whitening(), router.routing_vectors())  # (50, 5), no FAISS
    got = router.route(q, k=5)
    for row, routes in zip(scores, got):
        assert [r.task for r in routes][0] == router.tasks[int(np.argmax(row))]
        np.testing.assert_allclose(sorted(row, reverse=True), [r.score for r in routes], atol=1e-5)


def test_related_is_best_first_excludes_itself_and_finds_the_family(world):
    router = make_router(world)
    related = router.related("t0", k=4)
    assert all(isinstance(r, Related) for r in related) and len(related) == 4
    assert "t0" not in [r.task for r in related] and related[0].task == "t1"
    assert all(a.score >= b.score for a, b in zip(related, related[1:]))
    # an unseen member of t3's family, embedded against the library without being added
    others = TaskRouter(D)
    for i in (0, 1, 2, 3):
        others.add_task(f"t{i}", world["draw"](i, 80))
    new = others.profile_task(world["draw"](3, 60))
    assert new.shape == (2 * D,) and others.related(new, k=1)[0].task == "t3"
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        router.related("nope")


def test_label_names_pull_tasks_together(world):
    rng = np.random.default_rng(1)
    shared, other = unit(rng.standard_normal(D)), unit(rng.standard_normal((3, D)))
    labels = [shared, other[0], shared, other[1], other[2]]
    plain = make_router(world)
    router = TaskRouter(D, RouterConfig(label_weight=1.0))
    for i, name in enumerate(world["names"]):
        router.add_task(name, world["draw"](i, 80), label_vector=labels[i])
    before = {r.task: r.score for r in plain.related("t2", k=4)}["t0"]
    after = {r.task: r.score for r in router.related("t2", k=4)}["t0"]
    assert after > before


def test_router_validates_inputs(world):
    router = TaskRouter(D)
    with pytest.raises(ValueError, match="no tasks"):
        router.route(world["draw"](0, 1))
    router.add_task("a", world["draw"](0, 10))
    with pytest.raises(ValueError, match="already in the router"):
        router.add_task("a", world["draw"](0, 10))
    with pytest.raises(ValueError, match=r"shape \(n, 24\)"):
        router.add_task("b", np.zeros((3, 7)))
    with pytest.raises(ValueError, match="whitening_eps"):
        RouterConfig(whitening_eps=0)


def test_save_load_round_trip(tmp_path, world):
    router = make_router(world, index=IndexConfig(exact_max=2))  # HNSW even for 5 tasks
    router.save(tmp_path / "r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = TaskRouter.load(tmp_path / "r")
    assert loaded.tasks == router.tasks and loaded.config == router.config
    q = world["draw"](4, 8)
    assert loaded.route(q, k=2) == router.route(q, k=2)
    assert loaded.related("t1") == router.related("t1")


def test_corrupt_or_stale_index_is_rebuilt_with_a_warning(tmp_path, world):
    router = make_router(world)
    router.save(tmp_path / "r")
    q = world["draw"](2, 4)
    expected = router.route(q)
    (tmp_path / "r" / "routes.faiss").write_bytes(b"\x00" * 64)
    with pytest.warns(RuntimeWarning, match="routes.faiss.*corrupt"):
        loaded = TaskRouter.load(tmp_path / "r")
    assert loaded.route(q) == expected
    # stale: an index file left over from a smaller library
    small = TaskRouter(D)
    for i in range(3):
        small.add_task(f"t{i}", world["draw"](i, 40))
    small.save(tmp_path / "small")
    for f in ("tasks.faiss", "tasks.faiss.json"):
        shutil.copy(tmp_path / "small" / f, tmp_path / "r" / f)
    with pytest.warns(RuntimeWarning, match="tasks.faiss.*stale"):
        loaded = TaskRouter.load(tmp_path / "r")
    assert [r.task for r in loaded.related("t0", k=4)] == [r.task for r in router.related("t0", k=4)]
    with pytest.raises(FileNotFoundError, match="rebuild it from the registry"):
        TaskRouter.load(tmp_path / "absent")


# ---- pure embedding functions -----------------------------------------------------------------
def test_whitening_decorrelates_the_pooled_sample():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4000, 6)) @ rng.standard_normal((6, 6)) + 3.0
    w = fit_whitening(*moments(x), eps=1e-6)
    z = (x - w.mean) @ w.transform
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(6), atol=1e-3)
    assert np.allclose(np.linalg.norm(w(x[:5]), axis=1), 1.0)
    vecs = routing_vectors(x[:3], w)
    assert vecs.shape == (3, 6)
    with pytest.raises(ValueError, match="at least 2"):
        fit_whitening(1, x[0], np.outer(x[0], x[0]))


def test_task_embeddings_centre_label_vectors_and_keep_unlabelled_tasks():
    rng = np.random.default_rng(3)
    routing = unit(rng.standard_normal((3, 8)))
    labels = np.stack([unit(rng.standard_normal(8)), unit(rng.standard_normal(8)), np.zeros(8)])
    emb = task_profiles(routing, labels, label_weight=0.5)
    assert emb.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(emb[2, 8:], 0.0)  # no label names: routing part only
    np.testing.assert_allclose(emb[2, :8], routing[2], rtol=1e-5)
    # two labelled tasks centred on their mean: their label parts point in opposite directions
    np.testing.assert_allclose(emb[0, 8:] / np.linalg.norm(emb[0, 8:]), -emb[1, 8:] / np.linalg.norm(emb[1, 8:]), atol=1e-5)


def test_sample_texts_is_a_fixed_sample():
    texts = [f"text {i}" for i in range(100)]
    assert sample_texts(texts, 10) == sample_texts(texts, 10)
    assert len(set(sample_texts(texts, 10))) == 10 and sample_texts(texts, 10, seed=1) != sample_texts(texts, 10)
    assert sample_texts(texts[:5], 10) == texts[:5]
    assert default_routing_layer(6) == 4 and default_routing_layer(12) == 8


@pytest.fixture(scope="module")
def tiny_encoder(tiny_base_dir):
    """The tiny random 2-layer BERT (hidden 32) with the packaged MiniLM tokenizer (conftest)."""
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(tiny_base_dir).eval(), AutoTokenizer.from_pretrained(tiny_base_dir)


TEXTS = ["short one", "a much longer text that needs several more tokens than the first", "mid length text", "x"]


def test_encode_texts_is_normalised_in_input_order_and_padding_free(tiny_encoder):
    model, tok = tiny_encoder
    batch = encode_texts(model, tok, TEXTS, batch_size=3, precision="32")
    assert batch.shape == (4, 32) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)
    alone = np.concatenate([encode_texts(model, tok, [t], precision="32") for t in TEXTS])
    torch.testing.assert_close(torch.from_numpy(batch), torch.from_numpy(alone), atol=1e-5, rtol=1e-4)
    fast = encode_texts(model, tok, TEXTS, precision="bf16")
    assert np.min(np.sum(fast * batch, axis=1)) > 0.99


def test_encode_layers_stacks_the_requested_layers(tiny_encoder):
    model, tok = tiny_encoder
    both = encode_layers(model, tok, TEXTS, layers=(1, -1), precision="32")
    assert both.shape == (4, 2, 32)
    np.testing.assert_allclose(both[:, 1], encode_texts(model, tok, TEXTS, layer=-1, precision="32"), atol=1e-6)
    assert not np.allclose(both[:, 0], both[:, 1])
    assert encode_texts(model, tok, [], precision="32").shape == (0, 32)
    lab = label_embedding(lambda t: encode_texts(model, tok, t, precision="32"), ["Good", "Bad"])
    assert lab.shape == (32,) and np.isclose(np.linalg.norm(lab), 1.0)


def test_text_router_routes_raw_texts(tiny_encoder):
    model, tok = tiny_encoder
    kinds = {
        "pairs": lambda i: f"sentence 1: the cat number {i} sat.\nsentence 2: a cat sat on mat {i}.",
        "numbers": lambda i: f"{i} {i + 1} {i * 7} 42 1999 {i % 5}",
        "review": lambda i: f"Title: great product {i}\nText: I loved it, would buy again!!",
    }
    router = TextRouter(TaskRouter(32, RouterConfig(layer=default_routing_layer(2), sample_size=30)), model, tok)
    for name, make in kinds.items():
        vectors, label_vector = router.add_task(name, [make(i) for i in range(40)], labels=["yes", "no"])
        assert vectors.shape == (30, 32) and label_vector.shape == (32,)
    held_out = [make(i) for make in kinds.values() for i in range(100, 110)]
    assert router.route(held_out) == [name for name in kinds for _ in range(10)]
    assert [len(r) for r in router.routes(held_out[:2], k=2)] == [2, 2]
    assert router.related_to([kinds["numbers"](i) for i in range(200, 230)], k=1)[0].task == "numbers"
