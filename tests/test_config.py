import pytest

from continual.config import ConfigError, TrainConfig, parse_overrides


def test_defaults_validate_and_cover_required_keys():
    cfg = TrainConfig()
    for key in ("learning_rate", "batch_size", "max_epochs", "max_steps", "weight_decay", "warmup_steps",
                "lr_schedule", "grad_clip_norm", "accumulate_grad_batches", "precision",
                "early_stopping_patience", "seed", "r", "lora_alpha", "lora_dropout", "target_modules"):
        assert hasattr(cfg, key)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.01\nbatch_size: 8\ntarget_modules: [query, key]\n")
    cfg = TrainConfig.load(path, ["batch_size=4", "precision=bf16", "target_modules=query,value"])
    assert cfg.learning_rate == 0.01
    assert cfg.batch_size == 4
    assert cfg.precision == "bf16"
    assert cfg.target_modules == ["query", "value"]


def test_kind_settings_go_to_kind_options():
    cfg = TrainConfig.load(None, ["bottleneck=32"], kind_fields={"bottleneck"})
    assert cfg.kind_options == {"bottleneck": 32}
    assert cfg.flat()["bottleneck"] == 32


@pytest.mark.parametrize("item, message", [
    ("nope=1", "unknown setting 'nope'"),
    ("batch_size=abc", "batch_size='abc' is not a valid int"),
    ("batch_size=0", "batch_size=0 is invalid"),
    ("lr_schedule=step", "lr_schedule='step' is invalid: must be one of constant, linear, cosine"),
    ("precision=8", "precision='8' is invalid"),
    ("lora_dropout=1.5", "lora_dropout=1.5 is invalid"),
    ("learning_rate", "is not key=value"),
])
def test_bad_overrides_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        TrainConfig.load(None, [item])


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        TrainConfig.load(bad)


def test_parse_overrides_types():
    assert parse_overrides(["a=1", "b=0.5", "c=true", "d=x,y"]) == {"a": 1, "b": 0.5, "c": True, "d": "x,y"}
