from pathlib import Path

import pytest
import yaml

from sae.config import load_config
from sae.errors import ConfigError
from tests.conftest import tiny_tree, write_config


def test_overrides_set_nested_keys_with_yaml_typed_values(tiny_config: Path) -> None:
    cfg = load_config(tiny_config, ["train.lr=1e-4", "sae.arch=relu", "train.resample_at=[0.5]"])
    assert cfg.train.lr == 1e-4
    assert cfg.sae.arch == "relu"
    assert cfg.train.resample_at == [0.5]


def test_unknown_key_is_named(tiny_config: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key 'train.lrr'"):
        load_config(tiny_config, ["train.lrr=1"])


def test_bad_value_names_the_key_and_value(tiny_config: Path) -> None:
    with pytest.raises(ConfigError, match="train.batch_size.*'many'"):
        load_config(tiny_config, ["train.batch_size=many"])


def test_unknown_architecture_is_rejected(tiny_config: Path) -> None:
    with pytest.raises(ConfigError, match="sae.arch"):
        load_config(tiny_config, ["sae.arch=transformer"])


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_is_reported_with_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  toy: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_data_section_needs_exactly_one_source(tmp_path: Path) -> None:
    tree = tiny_tree()
    tree["data"]["store"] = "/some/store"
    with pytest.raises(ConfigError, match="exactly one of"):
        load_config(write_config(tmp_path / "two.yaml", tree))


def test_k_larger_than_dictionary_is_rejected(tiny_config: Path) -> None:
    with pytest.raises(ConfigError, match="k=100 exceeds d_sae=48"):
        load_config(tiny_config, ["sae.k=100"])


def test_a_section_level_error_names_the_problem_without_quoting_the_section(
    tiny_config: Path,
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(tiny_config, ["sae.arch=matryoshka", "sae.matryoshka_widths=[100]"])
    assert str(error.value) == "config key 'sae': matryoshka_widths exceed d_sae=48"


def test_shipped_configs_validate() -> None:
    for path in Path("configs").rglob("*.yaml"):
        load_config(path)


def test_topk_needs_a_whole_k_but_batchtopk_may_take_a_fraction(tiny_config: Path) -> None:
    assert load_config(tiny_config, ["sae.arch=batchtopk", "sae.k=2.5"]).sae.k == 2.5
    with pytest.raises(ConfigError, match="whole number k"):
        load_config(tiny_config, ["sae.arch=topk", "sae.k=2.5"])


def test_the_committed_config_reference_is_the_one_the_schema_generates() -> None:
    from sae.config_reference import reference_markdown

    committed = (Path(__file__).parents[1] / "configs" / "reference.md").read_text()
    assert committed == reference_markdown(), "run: sae config reference > configs/reference.md"


def test_every_config_key_has_a_description() -> None:
    from sae.config_reference import reference_markdown

    undocumented = [row for row in reference_markdown().splitlines() if row.endswith("|  |")]
    assert not undocumented, undocumented


def test_config_show_prints_every_default(tiny_config: Path, capsys) -> None:
    from pipelines.cli import main

    assert main(["config", "show", str(tiny_config), "--set", "sae.arch=relu"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["sae"]["arch"] == "relu" and shown["sae"]["l1_coefficient"] == 5.0
    assert "k" not in shown["sae"] and shown["train"]["adam_beta2"] == 0.999
