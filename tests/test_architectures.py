"""An architecture is one file: it declares its keys, remedy, shown keys and SAELens peer."""

import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from pipelines.train_and_evaluate import build_ground_truth, train_and_evaluate
from sae.config import ConfigError, load_config, validate_tree
from sae.models import architecture_names, build_sae, register_architecture
from sae.models.architectures.panneal import PAnnealOptions
from sae.models.architectures.topk import TopKOptions, TopKSAE
from sae.models.options_source import options_from_file, source_options
from sae.models.registry import architecture, builtin_names, shown_keys
from tests.conftest import tiny_tree, write_config


@pytest.mark.parametrize(
    ("arch", "key", "value"),
    [
        ("relu", "k", 3),
        ("relu", "jumprelu_bandwidth", 0.5),
        ("gated", "matryoshka_widths", [8, 16]),
        ("topk", "l1_coefficient", 1.0),
    ],
)
def test_a_key_of_another_architecture_stops_validation_naming_it(
    arch: str, key: str, value: object
) -> None:
    tree = tiny_tree(arch)
    tree["sae"][key] = value
    with pytest.raises(ConfigError, match=f"config key 'sae.{key}' does not apply to arch {arch}"):
        validate_tree(tree)


def test_a_saes_entry_is_validated_by_its_own_architecture() -> None:
    tree = tiny_tree()
    del tree["sae"]
    tree["saes"] = [{"name": "a", "arch": "topk", "k": 3}, {"name": "b", "arch": "relu", "k": 3}]
    with pytest.raises(ConfigError, match=r"'saes\[b\].k' does not apply to arch relu"):
        validate_tree(tree)
    tree["saes"][1] = {"name": "b", "arch": "relu", "l1_coefficient": 2.0, "lr": 1e-3}
    cfg = validate_tree(tree)
    assert [e.arch for e in cfg.sae_entries()] == ["topk", "relu"]
    assert cfg.sae_entries()[1].l1_coefficient == 2.0 and cfg.sae_entries()[1].lr == 1e-3


def test_set_arch_on_a_config_of_another_architecture_drops_its_keys_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_tree("matryoshka", matryoshka_widths=[8, 48]))
    cfg = load_config(config, ["sae.arch=relu", "sae.l1_coefficient=2"])
    assert cfg.sae.arch == "relu" and cfg.sae.l1_coefficient == 2
    assert "does not take k, matryoshka_widths" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="'sae.k' does not apply to arch relu"):
        load_config(config, ["sae.arch=relu", "sae.k=4"])  # given with --set: still an error


def test_each_architecture_declares_its_remedy_and_shown_keys() -> None:
    remedies = {name: validate_tree(tiny_tree(name)).sae.remedy() for name in architecture_names()}
    assert remedies["relu"] == remedies["gated"] == "resample"
    assert remedies["topk"] == remedies["batchtopk"] == remedies["jumprelu"] == "auxk"
    assert shown_keys("matryoshka") == ("k", "matryoshka_widths")
    assert shown_keys("an-architecture-from-elsewhere") == ()


def test_an_architecture_registered_from_outside_the_package_validates_and_trains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sae.models import registry

    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))  # undone after
    class HalfKOptions(TopKOptions):
        shown_keys: ClassVar[tuple[str, ...]] = ("k", "spare")
        spare: int = 1

    @register_architecture
    class HalfK(TopKSAE):  # a notebook's experiment
        arch = "notebook-halfk"
        Options = HalfKOptions

    assert "notebook-halfk" in architecture_names()
    cfg = validate_tree(tiny_tree("notebook-halfk", spare=2))
    assert isinstance(cfg.sae, HalfKOptions) and cfg.sae.spare == 2
    sae = build_sae(cfg.sae, 32)
    assert isinstance(sae, HalfK)
    assert (sae.encode(torch.randn(5, 32)) != 0).sum(-1).tolist() == [3] * 5
    assert shown_keys("notebook-halfk") == ("k", "spare")


def test_p_annealing_lowers_p_from_p_start_to_p_end() -> None:
    options = PAnnealOptions(arch="panneal", d_sae=8, p_end=0.4, anneal_start_frac=0.5)
    assert [options.p_at(t) for t in (0.0, 0.5, 0.75, 1.0)] == pytest.approx([1, 1, 0.7, 0.4])
    with pytest.raises(ValueError, match="p_end"):
        PAnnealOptions(arch="panneal", d_sae=8, p_start=0.5, p_end=0.8)


def test_p_annealing_learns_a_useful_dictionary(tmp_path: Path) -> None:
    tree = tiny_tree("panneal", l1_coefficient=1.0)
    result = train_and_evaluate(validate_tree(tree), build_ground_truth(validate_tree(tree)), tmp_path)
    assert result["mcc"] > 0.6, result
    assert result["explained_variance"] > 0.5, result


def test_a_config_error_outside_the_sae_section_comes_before_torch_is_imported(
    tmp_path: Path,
) -> None:
    tree = tiny_tree("relu")
    tree["train"]["lrr"] = 1.0
    config = write_config(tmp_path / "bad.yaml", tree)
    probe = (
        "import sys\n"
        "from sae.config import ConfigError, load_config\n"
        "try:\n"
        f"    load_config({str(config)!r})\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == ["unknown config key 'train.lrr'", "False"], done


def test_the_recorded_config_holds_each_architectures_own_keys() -> None:
    """metrics.json, the checkpoint's resume check and the model card read to_dict(cfg)."""
    from sae.config import to_dict

    tree = tiny_tree()
    del tree["sae"]
    tree["saes"] = [{"name": "r", "arch": "relu", "l1_coefficient": 3.0}, {"name": "t", "k": 4}]
    recorded = to_dict(validate_tree(tree))["saes"]
    assert recorded[0]["l1_coefficient"] == 3.0 and "k" not in recorded[0]
    assert recorded[1]["k"] == 4 and "l1_coefficient" not in recorded[1]
    assert to_dict(validate_tree(tiny_tree("relu")))["sae"]["l1_coefficient"] == 5.0


@pytest.mark.parametrize("name", builtin_names())
def test_the_options_read_from_an_architecture_file_are_the_imported_ones(name: str) -> None:
    """What checks a config before torch is imported: same keys, defaults, limits and methods."""
    read, imported = source_options(name), architecture(name).Options
    assert read is not None and read is not imported
    assert read.model_json_schema() == imported.model_json_schema()
    assert (read.shown_keys, read.default_remedy) == (imported.shown_keys, imported.default_remedy)
    written = {"arch": name, "d_sae": 64}
    one, other = read.model_validate(written), imported.model_validate(written)
    assert one.model_dump() == other.model_dump()
    assert one.saelens_training() == other.saelens_training()
    assert (one.remedy(), one.sparsity_warmup()) == (other.remedy(), other.sparsity_warmup())


def test_a_config_error_on_an_architectures_own_key_comes_before_torch_is_imported(
    tmp_path: Path,
) -> None:
    bad = {
        "relu": {"k": 8},
        "topk": {"k": -1},
        "matryoshka": {"k": 4, "matryoshka_widths": [16, 8]},
        "panneal": {"p_start": 0.5, "p_end": 0.8},
    }
    configs = []
    for arch, keys in bad.items():
        tree = tiny_tree(arch)
        tree["sae"] = {"arch": arch, "d_sae": 48, **keys}
        configs.append(str(write_config(tmp_path / f"{arch}.yaml", tree)))
    probe = (
        "import sys\n"
        "from sae.config import ConfigError, load_config\n"
        f"for config in {configs!r}:\n"
        "    try:\n"
        "        load_config(config)\n"
        "    except ConfigError as error:\n"
        "        print(error)\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    # the same lines as the imported architectures give
    expected = []
    for arch, config in zip(bad, configs, strict=True):
        architecture(arch)
        with pytest.raises(ConfigError) as error:
            load_config(config)
        expected.append(str(error.value))
    assert done.stdout.splitlines() == [*expected, "False"], done
    assert "does not apply to arch relu" in expected[0] and "p_end=0.8" in expected[3]


def test_an_architecture_file_is_read_without_its_model_class_or_what_is_not_loaded(
    tmp_path: Path,
) -> None:
    """Only the options are built: the registered class is not run, and a class that needs a
    module not loaded yet is left to the real import (None)."""
    source = (
        "from pydantic import Field\n"
        "import {module}\n"
        "from sae.config import KOptions\n"
        "from sae.models.registry import register_architecture\n"
        "class ReadOptions(KOptions):\n"
        "    extra_key: int = Field({default}, ge=0)\n"
        "@register_architecture\n"
        "class ReadSAE:\n"
        "    arch = 'read_only'\n"
        "    Options = ReadOptions\n"
    )
    light = tmp_path / "light.py"
    light.write_text(source.format(module="math", default="math.floor(2.5)"))
    read = options_from_file(light)
    assert read is not None and read.model_fields["extra_key"].default == 2
    assert "read_only" not in architecture_names()
    heavy = tmp_path / "heavy.py"
    heavy.write_text(source.format(module="no_such_module_here", default="no_such_module_here.X"))
    assert options_from_file(heavy) is None
