"""The bad-input catalogue: every case ends in ONE error of a known class whose message names the bad
value, with the store left exactly as it was (database rows and files).  Plus property-based tests
(hypothesis): the data loaders, the config parser and reference parsing never end in an unhandled
exception, whatever they are given."""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from continual.cli import app
from continual.config import ConfigError
from continual.sequence import SequenceError
from modeling.kinds import KindError
from registry import AdapterRegistry, RegistryError
from registry.store import StoreError
from tasks.errors import ContinualError, TaskError

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
FAST = ["--set", "max_steps=1", "--set", "batch_size=8", "--set", "max_length=32"]


@pytest.fixture(scope="module")
def world(new_registry, tiny_base_dir, tmp_path_factory):
    """A store with the demo tasks, one trained version of demo-topic with alias 'prod', and bad files."""
    from continual.config import TrainConfig
    from continual.train import train_task

    reg = new_registry("bad-inputs", demo_sizes={"train": 32, "dev": 8, "test": 8})
    train_task(reg, "demo-topic", TrainConfig(max_steps=1, batch_size=8, max_length=32), base_model=str(tiny_base_dir))
    reg.set_alias("demo-topic", "prod", 1)
    d = tmp_path_factory.mktemp("bad-files")
    good = [{"text": f"good {i}", "label": "pos"} for i in range(3)] + [{"text": f"bad {i}", "label": "neg"} for i in range(3)]

    def jsonl(name, rows):
        (d / name).write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        return str(d / name)

    files = {
        "good": jsonl("good.jsonl", good),
        "empty": jsonl("empty.jsonl", []),
        "malformed": jsonl("malformed.jsonl", [*good[:2], '{"text": "oops", "label": ', *good[2:]]),
        "nofield": jsonl("nofield.jsonl", [{"sentence": "x", "label": "pos"}, {"sentence": "y", "label": "neg"}]),
        "neutral": jsonl("neutral.jsonl", [{"text": "meh", "label": "neutral"}]),
        "nulllabel": jsonl("nulllabel.jsonl", [*good, {"text": "x", "label": None}]),
        "listtext": jsonl("listtext.jsonl", [*good, {"text": ["a", "b"], "label": "pos"}]),
        "scalars": jsonl("scalars.jsonl", ["1", "2"]),
        "onelabel": jsonl("onelabel.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}]),
    }
    (d / "notes.txt").write_text("hello\n")
    files["txt"] = str(d / "notes.txt")
    (d / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage\x81")
    files["binary"] = str(d / "binary.jsonl")
    (d / "nolabel.csv").write_text("text,category\nhello,a\nbye,b\n")
    files["csv"] = str(d / "nolabel.csv")
    (d / "adir").mkdir()
    files["dir"] = str(d / "adir")
    (d / "bad.yaml").write_text("max_steps: [1,\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "unknown.yaml").write_text("warp_speed: 9\n")
    files.update(badyaml=str(d / "bad.yaml"), listyaml=str(d / "list.yaml"), unknownyaml=str(d / "unknown.yaml"))

    def seq(name, text):
        (d / name).write_text(text)
        return str(d / name)

    base = f"base_model: {tiny_base_dir}\nconfig: {{max_steps: 1}}\n"
    files.update(
        seq_badyaml=seq("s1.yaml", "name: [x\n"),
        seq_list=seq("s2.yaml", "- a\n- b\n"),
        seq_unknown=seq("s3.yaml", "name: s\ntasks: [demo-topic]\nmethod: lora\ncolour: red\n"),
        seq_notasks=seq("s4.yaml", "name: s\nmethod: lora\n"),
        seq_unknowntask=seq("s5.yaml", "name: s\ntasks: [demo-topic, ghost-task]\nmethod: lora\n" + base),
        seq_dup=seq("s6.yaml", "name: s\ntasks: [demo-topic, demo-topic]\nmethod: lora\n"),
        seq_method=seq("s7.yaml", "name: s\ntasks: [demo-topic]\nmethod: telepathy\n"),
        seq_evallimit=seq("s8.yaml", "name: s\ntasks: [demo-topic]\nmethod: lora\neval_limit: -3\n"),
        seq_router=seq("s9.yaml", "name: s\ntasks: [demo-topic]\nmethod: lora\nrouter: crystal-ball\n"),
        seq_tasksstr=seq("s10.yaml", "name: s\ntasks: demo-topic\nmethod: lora\n"),
        seq_config=seq("s11.yaml", "name: s\ntasks: [demo-topic]\nmethod: lora\nconfig: {max_steps: lots}\n"),
    )
    (d / "a-file").write_text("x")
    files["a_file"] = str(d / "a-file")
    return reg, files, str(tiny_base_dir)


def snapshot(reg: AdapterRegistry) -> tuple:
    """Every row of every table of the store's database, and every file (path and sha256) under it."""
    root = reg.local_root
    con = sqlite3.connect(root / "mlflow.db")
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table' order by name")]
        rows = {t: sorted(map(repr, con.execute(f'select * from "{t}"'))) for t in tables}
    finally:
        con.close()
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != "mlflow.db" and "index" not in p.parts
             and not p.name.startswith(".")}
    return rows, files


def cli(*args):
    return ("cli", list(args))


def lib(fn):
    return ("lib", fn)


# (id, call, error class, text the message must contain: the bad value).  "{x}" is filled from `files`.
CASES = [
    # -- data files ---------------------------------------------------------------------------------
    ("data-missing", cli("tasks", "register", "t1", "--train", "/no/such/train.jsonl"), TaskError, "/no/such/train.jsonl"),
    ("data-empty", cli("tasks", "register", "t1", "--train", "{empty}"), TaskError, "empty.jsonl"),
    ("data-malformed-line", cli("tasks", "register", "t1", "--train", "{malformed}"), TaskError, "malformed.jsonl' line 3"),
    ("data-no-text-field", cli("tasks", "register", "t1", "--train", "{nofield}"), TaskError, "'text'"),
    ("data-dev-unknown-label", cli("tasks", "register", "t1", "--train", "{good}", "--dev", "{neutral}"), TaskError, "neutral"),
    ("data-labels-miss-one", cli("tasks", "register", "t1", "--train", "{good}", "--labels", "pos,x"), TaskError, "neg"),
    ("data-null-label", cli("tasks", "register", "t1", "--train", "{nulllabel}"), TaskError, "nulllabel.jsonl"),
    ("data-list-text", cli("tasks", "register", "t1", "--train", "{listtext}"), TaskError, "listtext.jsonl"),
    ("data-scalar-rows", cli("tasks", "register", "t1", "--train", "{scalars}"), TaskError, "scalars.jsonl"),
    ("data-one-label", cli("tasks", "register", "t1", "--train", "{onelabel}"), TaskError, "'x'"),
    ("data-unknown-format", cli("tasks", "register", "t1", "--train", "{txt}"), TaskError, "notes.txt"),
    ("data-binary", cli("tasks", "register", "t1", "--train", "{binary}"), TaskError, "binary.jsonl"),
    ("data-csv-no-label", cli("tasks", "register", "t1", "--train", "{csv}"), TaskError, "'label'"),
    ("data-empty-dir", cli("tasks", "register", "t1", "--train", "{dir}"), TaskError, "adir"),
    ("data-bad-kind", cli("tasks", "register", "t1", "--train", "{good}", "--kind", "regression"), TaskError, "regression"),
    ("data-missing-pair-field", cli("tasks", "register", "t1", "--train", "{good}", "--text-field", "text",
                                    "--text-field", "hypothesis"), TaskError, "hypothesis"),
    # -- task names ---------------------------------------------------------------------------------
    ("name-traversal", cli("tasks", "register", "../evil", "--train", "{good}"), TaskError, "../evil"),
    ("name-space", cli("tasks", "register", "a b", "--train", "{good}"), TaskError, "a b"),
    ("name-dot", cli("tasks", "register", "a.b", "--train", "{good}"), TaskError, "a.b"),
    ("name-quote", cli("tasks", "register", "it's", "--train", "{good}"), TaskError, "it's"),
    ("name-too-long", cli("tasks", "register", "x" * 65, "--train", "{good}"), TaskError, "x" * 65),
    ("name-taken", cli("tasks", "register", "demo-topic", "--train", "{good}"), RegistryError, "demo-topic"),
    ("name-unknown-train", cli("train", "ghost-task"), RegistryError, "ghost-task"),
    ("name-unknown-show", cli("tasks", "show", "ghost-task"), RegistryError, "ghost-task"),
    # -- config files and --set -----------------------------------------------------------------------
    ("set-not-int", cli("train", "demo-topic", "--set", "max_steps=lots"), ConfigError, "lots"),
    ("set-unknown-key", cli("train", "demo-topic", "--set", "warp_speed=9"), ConfigError, "warp_speed"),
    ("set-no-equals", cli("train", "demo-topic", "--set", "max_steps"), ConfigError, "max_steps"),
    ("set-negative-lr", cli("train", "demo-topic", "--set", "learning_rate=-1"), ConfigError, "learning_rate"),
    ("set-bad-precision", cli("train", "demo-topic", "--set", "precision=fp8"), ConfigError, "fp8"),
    ("set-share-group-dot", cli("train", "demo-topic", "--method", "shared-b-lora", "--set", "share_group=a.b"),
     KindError, "a.b"),
    ("config-missing", cli("train", "demo-topic", "--config", "/no/such.yaml"), ConfigError, "/no/such.yaml"),
    ("config-bad-yaml", cli("train", "demo-topic", "--config", "{badyaml}"), ConfigError, "bad.yaml"),
    ("config-not-mapping", cli("train", "demo-topic", "--config", "{listyaml}"), ConfigError, "list.yaml"),
    ("config-unknown-key", cli("train", "demo-topic", "--config", "{unknownyaml}"), ConfigError, "warp_speed"),
    ("method-unknown", cli("train", "demo-topic", "--method", "telepathy"), KindError, "telepathy"),
    ("init-from-unknown", cli("train", "demo-topic", "--base-model", "{base}", *FAST, "--init-from", "ghost-task"),
     RegistryError, "ghost-task"),
    ("base-model-missing", cli("train", "demo-topic", *FAST, "--base-model", "/no/such/model"), ContinualError,
     "/no/such/model"),
    # -- sequence files -------------------------------------------------------------------------------
    ("seq-missing", cli("run", "/no/such/seq.yaml"), SequenceError, "/no/such/seq.yaml"),
    ("seq-bad-yaml", cli("run", "{seq_badyaml}"), SequenceError, "s1.yaml"),
    ("seq-not-mapping", cli("run", "{seq_list}"), SequenceError, "s2.yaml"),
    ("seq-unknown-key", cli("run", "{seq_unknown}"), SequenceError, "colour"),
    ("seq-no-tasks", cli("run", "{seq_notasks}"), SequenceError, "tasks"),
    ("seq-unknown-task", cli("run", "{seq_unknowntask}"), SequenceError, "ghost-task"),
    ("seq-duplicate-task", cli("run", "{seq_dup}"), SequenceError, "demo-topic"),
    ("seq-unknown-method", cli("run", "{seq_method}"), SequenceError, "telepathy"),
    ("seq-negative-eval-limit", cli("run", "{seq_evallimit}"), SequenceError, "-3"),
    ("seq-unknown-router", cli("run", "{seq_router}"), SequenceError, "crystal-ball"),
    ("seq-tasks-string", cli("run", "{seq_tasksstr}"), SequenceError, "demo-topic"),
    ("seq-bad-config", cli("run", "{seq_config}"), SequenceError, "lots"),
    # -- adapter references and aliases ----------------------------------------------------------------
    ("ref-empty-alias", cli("predict", "demo-topic@", "hello"), RegistryError, "demo-topic@"),
    ("ref-version-zero", cli("predict", "demo-topic:0", "hello"), RegistryError, "demo-topic:0"),
    ("ref-version-text", cli("predict", "demo-topic:latest", "hello"), RegistryError, "latest"),
    ("ref-no-such-version", cli("predict", "demo-topic:99", "hello"), RegistryError, "99"),
    ("ref-no-such-alias", cli("predict", "demo-topic@staging", "hello"), RegistryError, "staging"),
    ("ref-unknown-task", cli("predict", "ghost-task:1", "hello"), RegistryError, "ghost-task"),
    ("ref-quote-task", cli("predict", "it's:1", "hello"), RegistryError, "it's"),
    ("ref-quote-alias", lib(lambda reg: reg.resolve("demo-topic@it's")), RegistryError, "it's"),
    ("ref-no-versions", lib(lambda reg: reg.load("demo-intent")), RegistryError, "demo-intent"),
    ("alias-reserved-v1", cli("adapters", "alias", "demo-topic", "v1", "1"), RegistryError, "v1"),
    ("alias-reserved-V12", cli("adapters", "alias", "demo-topic", "V12", "1"), RegistryError, "V12"),
    ("alias-latest", cli("adapters", "alias", "demo-topic", "latest", "1"), RegistryError, "latest"),
    ("alias-digits", cli("adapters", "alias", "demo-topic", "42", "1"), RegistryError, "42"),
    ("alias-quote", cli("adapters", "alias", "demo-topic", "it's", "1"), RegistryError, "it's"),
    ("alias-no-version", cli("adapters", "alias", "demo-topic", "prod2", "7"), RegistryError, "7"),
    ("alias-delete-unknown", cli("adapters", "alias", "demo-topic", "staging", "--delete"), RegistryError, "staging"),
    ("shared-quote-mode", lib(lambda reg: reg.load("demo-topic", shared="latest")), RegistryError, "latest"),
    # -- other CLI arguments ---------------------------------------------------------------------------
    ("predict-input-missing", cli("predict", "demo-topic", "--input", "/no/such/texts.txt"), ContinualError,
     "/no/such/texts.txt"),
    ("store-bad-scheme", cli("tasks", "list", "--store", "ftp://example.org/x"), StoreError, "ftp://example.org/x"),
    ("store-is-a-file", cli("tasks", "list", "--store", "{a_file}"), StoreError, "a-file"),
]


def _fill(arg: str, files: dict, base: str) -> str:
    return arg.replace("{base}", base).format(**files) if "{" in arg else arg


def _original(exc: BaseException | None) -> BaseException | None:
    """The ContinualError behind the CLI's exit (`raise typer.Exit(1) from None` keeps it as __context__)."""
    while exc is not None and not isinstance(exc, ContinualError):
        exc = exc.__context__
    return exc


@pytest.mark.parametrize("case_id, call, error, named", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, case_id, call, error, named):
    reg, files, base = world
    before = snapshot(reg)
    how, what = call
    if how == "cli":
        args = [_fill(a, files, base) for a in what]
        if "--store" not in args:
            args += ["--store", str(reg.local_root)]
        result = runner.invoke(app, args)
        assert result.exit_code == 1, f"exit {result.exit_code}: {result.output}"
        assert "Traceback" not in result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        raised = _original(result.exception)
        message = result.output
    else:
        with pytest.raises(ContinualError) as info:
            what(reg)
        raised, message = info.value, str(info.value)
    assert isinstance(raised, error), f"{type(raised).__name__}: {raised}"
    assert named in message, message
    assert snapshot(reg) == before, "the store changed"


def test_catalogue_size():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


def test_snapshot_sees_a_change(world):
    """The catalogue's 'store unchanged' check can fail: one alias row more is seen, and gone again."""
    reg = world[0]
    before = snapshot(reg)
    reg.set_alias("demo-topic", "tmp", 1)
    assert snapshot(reg) != before
    reg.delete_alias("demo-topic", "tmp")
    assert snapshot(reg) == before


# -- property-based: whatever the input, a ContinualError or a result, never anything else -----------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ""]
json_rows = st.lists(st.dictionaries(st.sampled_from(["text", "label", "x", ""]),
                                     st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                                               st.lists(st.integers(), max_size=2)), max_size=3), max_size=5)


@PROPERTY
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200),
                         json_rows.map(lambda rows: "\n".join(json.dumps(r) for r in rows)),
                         json_rows.map(json.dumps)),
       suffix=st.sampled_from(SUFFIXES))
def test_data_loaders_never_crash(tmp_path, content, suffix):
    from tasks.loaders import build_spec, read_records

    path = tmp_path / f"data{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    for call in (lambda: read_records(path), lambda: build_spec("prop", path)):
        try:
            call()
        except ContinualError as err:
            assert "\n" not in str(err).strip(), str(err)


@PROPERTY
@given(items=st.lists(st.one_of(st.text(max_size=30),
                                st.tuples(st.sampled_from(["max_steps", "learning_rate", "precision", "lora_alpha",
                                                           "target_modules", "seed", "bogus", ""]),
                                          st.text(max_size=15)).map("=".join)), max_size=4),
       yaml_text=st.one_of(st.none(), st.text(max_size=80)))
def test_config_parser_never_crashes(tmp_path, items, yaml_text):
    from continual.config import TrainConfig
    from modeling.kinds import get_kind

    path = None
    if yaml_text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml_text, encoding="utf-8", errors="surrogatepass")
    kind_fields = {f for f in get_kind("lora").config_cls.__dataclass_fields__}
    try:
        TrainConfig.load(path, items, kind_fields=kind_fields)
    except ContinualError:
        pass


@PROPERTY
@given(ref=st.one_of(st.text(max_size=40), st.from_regex(r"[a-z-]{0,8}[@:][A-Za-z0-9'\" .-]{0,6}", fullmatch=True)))
def test_reference_parsing_never_crashes(ref):
    from registry.registry import parse_ref, validate_alias

    for call in (lambda: parse_ref(ref), lambda: validate_alias(ref)):
        try:
            call()
        except ContinualError:
            pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ref=st.one_of(st.text(max_size=20), st.from_regex(r"demo-topic[@:][A-Za-z0-9'\" .-]{0,6}", fullmatch=True)))
def test_resolving_any_reference_never_crashes(world, ref):
    """Through the store too: MLflow's own errors (reserved aliases, quotes in filters) never leak."""
    try:
        world[0].resolve(ref)
    except ContinualError:
        pass
