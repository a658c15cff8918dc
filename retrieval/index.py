"""A FAISS vector index whose ids map to names, saved with a JSON sidecar.

This is the only module of the project that imports :mod:`faiss` (house style: one
third-party system behind one small module). Everything above it sees plain numpy arrays
and names.

* :class:`VectorIndex` holds ``n`` vectors of dimension ``d`` and one name per vector
  (several vectors may share a name, e.g. a sample of one task's inputs). FAISS id ``i`` is the
  ``i``-th vector added; the sidecar maps those int64 ids back to names.
* Below ``IndexConfig.exact_max`` vectors the index is exact (``IndexFlatIP``); above it, it is
  approximate: HNSW by default (``IndexHNSWFlat``, inner product) or IVF (``IndexIVFFlat``).
  Scores are inner products, i.e. cosine similarities for L2-normalised vectors.
* :meth:`VectorIndex.save` writes ``<path>`` (the FAISS file) and ``<path>.json`` (the
  sidecar: id -> name, dim, count, kind, content checksum, sha256 of the FAISS file).
  :meth:`VectorIndex.load` raises :class:`IndexStale` when the file is missing, corrupt, or
  does not hold the content the caller expects; :func:`load_or_rebuild` turns that into a
  warning and a rebuild.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modeling.manifest import sha256_file
from tasks.errors import ContinualWarning

__all__ = [
    "IndexConfig",
    "IndexStale",
    "VectorIndex",
    "atomic_path",
    "content_checksum",
    "load_or_rebuild",
    "set_num_threads",
]

INDEX_KINDS = ("auto", "flat", "hnsw", "ivf")
SIDECAR_SUFFIX = ".json"
SIDECAR_VERSION = 1


def _faiss():
    # Deferred so that importing the registry does not load FAISS (and its OpenMP runtime)
    # until an index is actually built or read.
    import faiss

    return faiss


class IndexStale(Exception):
    """The saved index is missing, corrupt, or does not match what the caller expects.

    ``reason`` says which, in words; rebuild the index from its source vectors
    (:func:`load_or_rebuild` does that with a warning).
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"FAISS index {str(path)!r} cannot be used: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class IndexConfig:
    """How to build a :class:`VectorIndex`. Every field has a default."""

    kind: str = "auto"
    """'auto' (exact up to ``exact_max`` vectors, else HNSW), 'flat' (always exact), 'hnsw' or 'ivf'."""
    exact_max: int = 10_000
    """With kind='auto': largest number of vectors still searched exactly (IndexFlatIP)."""
    hnsw_m: int = 32
    """HNSW: neighbours per node (memory ~ 2*M int32 per vector); higher = better recall, slower build."""
    ef_construction: int = 80
    """HNSW: candidate list size while building."""
    ef_search: int = 64
    """HNSW: candidate list size while searching (the recall / latency knob); raised to k if smaller."""
    ivf_nlist: int = 0
    """IVF: number of clusters; 0 = 4*sqrt(n)."""
    ivf_nprobe: int = 16
    """IVF: clusters visited per query."""
    single_thread_below: int = 64
    """Search batches smaller than this run on one OpenMP thread (faster for single queries)."""

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"IndexConfig.kind={self.kind!r} is not one of {list(INDEX_KINDS)}.")
        for name in ("exact_max", "hnsw_m", "ef_construction", "ef_search", "ivf_nprobe"):
            if getattr(self, name) < 1:
                raise ValueError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.ivf_nlist < 0:
            raise ValueError(f"IndexConfig.ivf_nlist must be >= 0 (0 = automatic), got {self.ivf_nlist}.")

    def resolve_kind(self, n: int) -> str:
        """The concrete index kind ('flat', 'hnsw' or 'ivf') used for ``n`` vectors."""
        if self.kind == "auto":
            return "flat" if n <= self.exact_max else "hnsw"
        return self.kind


def _as_matrix(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"vectors must have shape (n, d), got {x.shape}.")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"vectors have dimension {x.shape[1]} but the index holds dimension {dim}.")
    return x


def content_checksum(names: Sequence[str], vectors: np.ndarray) -> str:
    """sha256 over the names and the float32 bytes of the vectors, in order.

    Callers store it with their source vectors and pass it to :meth:`VectorIndex.load` as
    ``expected_checksum`` to detect a stale index file.
    """
    x = _as_matrix(vectors)
    h = hashlib.sha256()
    h.update(json.dumps(list(names)).encode())
    h.update(str(x.shape).encode())
    h.update(x.tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A unique temporary path beside ``path``; renamed onto ``path`` when the block succeeds.

    Readers see the old file or the new one, never half of one, and two processes writing the same
    file at once each write their own temporary (a fixed ``.tmp`` name would let one rename the
    other's half-written file).  The temporary keeps ``path``'s suffix (``np.savez`` insists on .npz).
    """
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def set_num_threads(n: int) -> None:
    """Threads FAISS uses for batch searches and builds (its OpenMP pool); process-wide."""
    _faiss().omp_set_num_threads(int(n))


@contextlib.contextmanager
def _omp_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class VectorIndex:
    """Named vectors in a FAISS index: exact for small libraries, HNSW/IVF for large ones.

    Build with :meth:`build`; query with :meth:`search`; persist with :meth:`save` /
    :meth:`load`. Vectors should be L2-normalised: scores are inner products.
    """

    def __init__(self, index, names: list[str], kind: str, checksum: str, config: IndexConfig):
        self._index = index
        self.names = names
        """Name of each vector, indexed by FAISS id."""
        self.kind = kind
        """'flat', 'hnsw' or 'ivf'."""
        self.checksum = checksum
        """:func:`content_checksum` of the names and vectors the index was built from."""
        self.config = config

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        names: Sequence[str],
        vectors: np.ndarray,
        config: IndexConfig | None = None,
        checksum: str | None = None,
    ) -> VectorIndex:
        """Index ``vectors`` (n, d) float32, the i-th vector named ``names[i]`` (FAISS id i).

        ``checksum`` identifies the content for staleness checks on :meth:`load`; by default
        :func:`content_checksum` of the names and vectors. A caller that derives the vectors
        (e.g. by whitening) can pass a checksum of its source data instead, which stays stable
        across machines where float results may differ in the last bit.
        """
        config = config or IndexConfig()
        x = _as_matrix(vectors)
        names = [str(n) for n in names]
        if len(names) != x.shape[0]:
            raise ValueError(f"{len(names)} names for {x.shape[0]} vectors; give one name per vector.")
        if x.shape[0] == 0:
            raise ValueError("cannot build an index from 0 vectors.")
        faiss = _faiss()
        n, d = x.shape
        kind = config.resolve_kind(n)
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.ef_construction
        else:  # ivf
            nlist = config.ivf_nlist or max(1, int(4 * np.sqrt(n)))
            nlist = min(nlist, n)
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
        index.add(x)
        self = cls(index, names, kind, checksum or content_checksum(names, x), config)
        self._apply_search_params()
        return self

    def _apply_search_params(self) -> None:
        if self.kind == "hnsw":
            self._index.hnsw.efSearch = self.config.ef_search
        elif self.kind == "ivf":
            self._index.nprobe = self.config.ivf_nprobe

    # ---- querying -------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def set_ef_search(self, ef_search: int) -> None:
        """Change HNSW's efSearch (recall / latency trade-off) without rebuilding."""
        self.config.ef_search = int(ef_search)
        self._apply_search_params()

    def search_ids(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw search: ``(scores (m, k) float32, ids (m, k) int64)``, best first; id -1 = no hit."""
        q = _as_matrix(queries, self.dim)
        k = max(1, min(int(k), len(self)))
        if self.kind == "hnsw":  # HNSW returns at most efSearch hits
            self._index.hnsw.efSearch = max(self.config.ef_search, k)
        threads = 1 if q.shape[0] < self.config.single_thread_below else None
        with _omp_threads(threads):
            scores, ids = self._index.search(q, k)
        return scores, ids

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` neighbours of each query: ``(scores (m, k), names per query)``, best first.

        ``k`` is capped at the number of indexed vectors; missing hits (possible with an
        approximate index) are dropped from the name lists and scored ``-inf``.
        """
        scores, ids = self.search_ids(queries, k)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        labels = [[self.names[i] for i in row if i >= 0] for row in ids]
        return scores, labels

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the FAISS index to ``path`` and its sidecar to ``path + '.json'``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss = _faiss()
        with atomic_path(path) as tmp:  # readers never see a half-written index
            faiss.write_index(self._index, str(tmp))
        sidecar = {
            "version": SIDECAR_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self),
            "checksum": self.checksum,
            "file_sha256": sha256_file(path),
            "config": asdict(self.config),
            "ids": {str(i): name for i, name in enumerate(self.names)},
        }
        with atomic_path(_sidecar_path(path)) as side_tmp:
            side_tmp.write_text(json.dumps(sidecar))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        expected_checksum: str | None = None,
        expected_count: int | None = None,
    ) -> VectorIndex:
        """Read an index written by :meth:`save`.

        Raises :class:`IndexStale` if either file is missing or unreadable, if the FAISS file does
        not match the sidecar (sha256, count, dimension), or if the content differs from what the
        caller expects (``expected_checksum`` / ``expected_count``).
        """
        path = Path(path)
        side = _sidecar_path(path)
        if not path.exists():
            raise IndexStale(path, "the index file is missing")
        if not side.exists():
            raise IndexStale(path, f"its sidecar {side.name!r} is missing")
        try:
            meta = json.loads(side.read_text())
            kind, dim, count, checksum = meta["kind"], int(meta["dim"]), int(meta["count"]), meta["checksum"]
            names = [meta["ids"][str(i)] for i in range(count)]
            config = IndexConfig(**meta.get("config", {}))
        except (ValueError, KeyError, TypeError) as e:
            raise IndexStale(path, f"its sidecar is corrupt ({type(e).__name__}: {e})") from None
        if meta.get("file_sha256") != sha256_file(path):
            raise IndexStale(path, "the index file is corrupt (its sha256 differs from the sidecar's)")
        try:
            index = _faiss().read_index(str(path))
        except RuntimeError as e:
            raise IndexStale(path, f"the index file is corrupt ({str(e).splitlines()[0]})") from None
        if int(index.ntotal) != count or int(index.d) != dim:
            raise IndexStale(
                path, f"the file holds {index.ntotal} vectors of dim {index.d}, the sidecar says {count} of dim {dim}"
            )
        if expected_count is not None and count != expected_count:
            raise IndexStale(path, f"it holds {count} vectors, expected {expected_count} (stale)")
        if expected_checksum is not None and checksum != expected_checksum:
            raise IndexStale(path, "its content checksum differs from the expected one (stale)")
        self = cls(index, names, kind, checksum, config)
        self._apply_search_params()
        return self


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def load_or_rebuild(
    path: str | os.PathLike,
    build_fn: Callable[[], VectorIndex],
    expected_checksum: str | None = None,
    expected_count: int | None = None,
) -> VectorIndex:
    """Load the index at ``path``; if it is missing, corrupt or stale, warn, rebuild and save it.

    ``build_fn()`` returns a fresh :class:`VectorIndex` from the source of truth (the caller's
    stored vectors). A rebuild is reported with ``warnings.warn`` (``ContinualWarning``, a RuntimeWarning) naming the
    reason, and the rebuilt index is written back to ``path``.
    """
    try:
        return VectorIndex.load(path, expected_checksum=expected_checksum, expected_count=expected_count)
    except IndexStale as e:
        warnings.warn(f"{e}; rebuilding it from the stored vectors.", ContinualWarning, stacklevel=2)
    index = build_fn()
    index.save(path)
    return index
