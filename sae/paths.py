"""Names that become paths, and paths read from files: both must stay inside their directory.

An SAE's name becomes DIR/<name>, a published SAE's hook becomes PATH/<hook>, a manifest's
shard entry becomes STORE/<file>. Each comes from a config or a file a user (or anyone who
handed them the file) wrote, so `..`, `.`, `/abs` or `a/../../b` would read, replace or delete
things outside the directory the command was given. Every such name goes through here.
"""

from __future__ import annotations

import re

from sae.errors import UserError

# one path component of ordinary characters; "." and ".." are excluded below
_PLAIN = re.compile(r"^[A-Za-z0-9_.-]+$")


def plain_name(name: object, what: str) -> str:
    """`name` if it is one plain path component (letters, digits, `_`, `.`, `-`; not `.`,
    `..` or hidden), else UserError naming `what` it was meant to be."""
    text = str(name)
    if not isinstance(name, str) or not _PLAIN.match(text) or text.startswith("."):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise UserError(
            f"{what} '{shown}' is not a plain file name (letters, digits, '_', '.', '-'; "
            "not starting with '.')"
        )
    return text


def looks_like_local_path(name: str) -> bool:
    """Whether a model or dataset reference that does not exist was meant as a local path.

    Hub names are "name" or "owner/name"; "./x", "/x", "~/x" and "a/b/c" are paths.
    """
    return name.startswith(("/", ".", "~")) or name.count("/") > 1
