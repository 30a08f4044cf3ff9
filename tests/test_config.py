"""Config: defaults, overrides, protocol blocks, grid expansion and one-line errors naming the key path."""
from pathlib import Path

import pytest

from nin_bench.config import PRESETS, ConfigError, load_config, resolve_protocol, validate
from nin_bench.variants import expand_grid

ABLATIONS = sorted((Path(__file__).parents[1] / "ablations").glob("*.yaml"))


def _raw(**extra):
    return {"name": "t", "grid": {"model.n_1x1": [0, 1, 2]}, **extra}


def test_presets_match_registry():
    from nin_bench.models import REGISTRY

    assert sorted(PRESETS) == sorted(REGISTRY)


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_shipped_ablations_validate(path):
    cfg = load_config(path)
    assert cfg.description, "each ablation says what question it answers"
    for cuda in (False, True):
        resolved, protocol, device = resolve_protocol(cfg, cuda=cuda)
        assert (protocol, device) == (("gpu", "cuda") if cuda else ("cpu", "cpu"))
        assert expand_grid(resolved)


def test_grid_is_cartesian_product_in_yaml_order():
    cfg = validate({"name": "t", "grid": {"data.dataset": ["cifar10", "fashion_mnist"], "model.n_1x1": [0, 2]}})
    ids = [v.id for v in expand_grid(cfg)]
    assert ids == ["nin_cifar-n1x1_0-gap-do0.5-cifar10", "nin_cifar-n1x1_2-gap-do0.5-cifar10",
                   "nin_cifar-n1x1_0-gap-do0.5-fashion_mnist", "nin_cifar-n1x1_2-gap-do0.5-fashion_mnist"]


def test_variant_id_names_non_default_axes():
    cfg = validate(_raw(model={"width": 0.5, "batchnorm": True}, grid={"train.lr": [0.1, 0.2]}))
    assert [v.id for v in expand_grid(cfg)] == ["nin_cifar-n1x1_2-gap-do0.5-cifar10-w0.5-bn-lr0.1",
                                                "nin_cifar-n1x1_2-gap-do0.5-cifar10-w0.5-bn-lr0.2"]


def test_set_overrides_and_grid_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: t\ngrid: {model.n_1x1: [0, 1]}\n")
    cfg = load_config(path, ["train.epochs=3", "grid.model.head=[gap, fc]", "model.dropout=0"])
    assert cfg.train.epochs == 3 and cfg.model.dropout == 0.0
    assert len(expand_grid(cfg)) == 4


def test_protocol_blocks():
    cfg = validate(_raw(cpu={"model.width": 0.5, "seeds": [0]}, gpu={"timing.dtypes": ["bf16"]}, seeds=[0, 1]))
    cpu, protocol, _ = resolve_protocol(cfg, cuda=False)
    assert (protocol, cpu.model.width, cpu.seeds) == ("cpu", 0.5, [0])
    full, protocol, _ = resolve_protocol(cfg, cuda=False, full=True)
    assert (protocol, full.model.width) == ("full", 1.0)
    gpu, protocol, device = resolve_protocol(cfg, cuda=True)
    assert (protocol, device, gpu.timing.dtypes, gpu.model.width) == ("gpu", "cuda", ["bf16"], 1.0)
    quick, protocol, _ = resolve_protocol(cfg, cuda=False, quick=True)
    assert (protocol, quick.train.epochs, quick.seeds, quick.timing.repeats) == ("quick", 1, [0], 5)
    assert quick.timing.batch_sizes == [1, 128]


def test_command_line_sets_beat_protocol_blocks():
    cfg = validate(_raw(cpu={"train.subset": 30000, "model.width": 0.25}))
    sets = ["train.subset=8000"]
    resolved, _, _ = resolve_protocol(cfg, cuda=False, sets=sets)
    assert (resolved.train.subset, resolved.model.width) == (8000, 0.25)
    resolved, _, _ = resolve_protocol(cfg, cuda=False, quick=True, sets=sets)
    assert resolved.train.subset == 8000


def test_cuda_requested_without_cuda_is_an_error():
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_protocol(validate(_raw(device="cuda")), cuda=False)


@pytest.mark.parametrize("raw, message", [
    (_raw(model={"n_1x1": 5}), "model.n_1x1: Input should be less than or equal to 3 (got 5)"),
    (_raw(model={"colour": 1}), "unknown key 'model.colour'; allowed here: batchnorm, dropout, fc_hidden"),
    (_raw(bogus=1), "unknown key 'bogus'"),
    (_raw(train={"epochs": "ten"}), "train.epochs: Input should be a valid integer (got 'ten')"),
    (_raw(model={"preset": "resnet"}), "model.preset: Input should be 'nin_cifar' or 'nin_d2l' (got 'resnet')"),
    (_raw(stages=["profile", "bake"]), "unknown stage 'bake'; allowed: profile, timing, train"),
    ({"name": "t", "grid": {}}, "grid is empty"),
    ({"name": "t", "grid": {"model.n_1x1": []}}, "grid.model.n_1x1 is an empty list"),
    (_raw(grid={"model.n_1x1": [1, 7]}), "grid.model.n_1x1: model.n_1x1: Input should be less than or equal to 3"),
    (_raw(grid={"model.depth": [1]}), "grid.model.depth: unknown key 'model.depth'"),
    (_raw(grid={"name": ["a"]}), "grid.name: cannot be overridden here"),
    (_raw(cpu={"train.epochs": 0}), "cpu: train.epochs: Input should be greater than or equal to 1 (got 0)"),
    (_raw(timing={"batch_sizes": [1, 2]}), "reference_batch_size 128 must be one of timing.batch_sizes [1, 2]"),
    (_raw(seeds=[]), "seeds must be a non-empty list"),
    ({"grid": {"model.n_1x1": [1]}}, "missing required key 'name'"),
    (_raw(data={"dataset": "imagefolder"}), "needs data.path"),
])
def test_errors_name_key_value_and_allowed(raw, message):
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ngrid: {model.n_1x1: [0, 1\n")
    with pytest.raises(ConfigError, match="invalid YAML in .* at line"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(ABLATIONS[0], ["epochs"])
