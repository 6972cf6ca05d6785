"""Reading YAML configs with bounds: size, alias expansion, duplicate keys, encoding.

PyYAML's safe loader is safe against code execution but not against three accidents (or
hostile files, now that configs may arrive over HTTP):
- a duplicate key silently replaces the earlier one, at any depth (two `train:` sections);
- an alias bomb (`a: &a [1,1,...]`, `b: &b [*a,*a,...]`, ...) is tiny on disk and shares its
  nodes, but expands exponentially wherever the value is walked: a 7-level bomb under `seed:`
  ran for minutes and printed a 39 MB "one-line" error;
- a file that is not UTF-8 ends in a UnicodeDecodeError traceback.
Each is one ConfigError here, naming the problem and, where there is one, the line.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sae.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # configs are a few KB; a 1 MB one is a mistake
MAX_NODES = 100_000  # nodes after alias expansion (a config has hundreds)
MAX_QUOTE = 200  # characters of a value an error message quotes

_MERGE = "tag:yaml.org,2002:merge"


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring = 3, 8, 8, MAX_QUOTE


def quote(value: Any) -> str:
    """repr of a value for an error message, cut to MAX_QUOTE characters. reprlib walks only
    what it shows, so a huge (or alias-expanded) value costs nothing to quote."""
    text = _SHORT.repr(value)
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 3] + "..."


class _DuplicateKey(Exception):
    pass


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE:
                continue  # merged keys (`<<: *base`) may be overridden: that is their use
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(
                    f"duplicate key {quote(key)} at line {line} (first at line {seen[key]})"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_yaml_map)


def _expanded_size(root: Node) -> int:
    """Nodes in the document with every alias expanded, counted without expanding: each
    shared node's size is computed once (linear in the file) and stops at MAX_NODES."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        if children_done or not children:
            sizes[id(node)] = min(MAX_NODES + 1, 1 + sum(sizes[id(c)] for c in children))
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def parse_yaml(text: str, where: str) -> Any:
    """The value of YAML `text`; ConfigError naming `where` (a file, an override) if it is not
    valid, repeats a key, or expands (through aliases) beyond MAX_NODES nodes."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_NODES:
            raise ConfigError(
                f"{where}: its aliases expand to more than {MAX_NODES} values (an alias bomb?)"
            )
        return loader.construct_document(node)
    except _DuplicateKey as error:
        raise ConfigError(f"{where}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}:{at} is not valid YAML") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml_file(path: Path) -> Any:
    """A config file's value: at most MAX_CONFIG_BYTES of UTF-8 YAML, else ConfigError."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: {size} bytes is too large for a config (at most {MAX_CONFIG_BYTES})"
            )
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: line {line} is not UTF-8 text (byte {data[error.start]:#04x}); "
            "save the config as UTF-8"
        ) from None
    return parse_yaml(text, str(path))
