"""The command line explains itself: help on every option, defaults, sections read, version."""

import argparse

import pytest

from pipelines.cli import READS, build_parser, main


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("sae",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_option_of_every_command_has_help_text() -> None:
    missing = [
        f"{' '.join(path)} {action.option_strings or action.dest}"
        for path, parser in _parsers(build_parser())
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert not missing, missing


@pytest.mark.parametrize("command", sorted(READS))
def test_config_commands_say_which_sections_they_read_and_show_defaults(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"Reads the config sections: {READS[command]}" in text
    assert "repeatable" in text


def test_train_help_names_the_live_model_source(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "a live model (data.lm)" in " ".join(capsys.readouterr().out.split())


def test_options_show_their_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "train", "--help"])
    assert "(default: topk,relu)" in " ".join(capsys.readouterr().out.split())


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from sae import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"sae {__version__}"
