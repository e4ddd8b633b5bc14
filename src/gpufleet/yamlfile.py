"""Reading a user's YAML file safely: every strategy, catalog and variables file goes through here.

PyYAML's safe_load still lets a file lie or hurt: a repeated key silently replaces the first
one (a second `services:` drops the whole first list), a few hundred bytes of nested aliases
expand into billions of nodes as soon as anything walks the data (a "billion laughs": 761
bytes took the planner to 4 GB), and a huge or binary file is parsed at length before failing.
So: the size is capped before parsing, the bytes must be UTF-8 text, the composed node graph
is checked (duplicate keys, alias expansion, nesting depth) before any Python object is built,
and the C parser is used when PyYAML has it. Every refusal is an InputError naming the file,
the field (or line) and the fix.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from .errors import InputError

MAX_BYTES = 1024 * 1024           # a strategy or a catalog is a few KiB; 1 MiB is generous
MAX_ALIAS_NODES = 10_000          # nodes that aliases may add to the document when expanded
MAX_DEPTH = 64                    # nesting of mappings and sequences

_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(_BASE_LOADER):  # type: ignore[misc,valid-type]
    """The safe loader (C-accelerated where PyYAML was built with libyaml)."""


def _field(path: list) -> str:
    text = ""
    for part in path[:8]:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return (text + ("..." if len(path) > 8 else "")) or "-"


def _check_graph(root: yaml.Node, source: str) -> None:
    """Duplicate keys, recursive or exploding aliases and deep nesting, before construction.

    The composer resolves an alias to the very node its anchor names, so a node met again
    while walking is an alias use: the walk counts every node as often as the expanded
    document would hold it and stops at the bound, never expanding more than that.
    """
    distinct: set[int] = set()
    expanded = 0
    stack = [(root, [], frozenset(), 0)]  # node, path, ids of the enclosing nodes, depth
    while stack:
        node, path, enclosing, depth = stack.pop()
        if id(node) in enclosing:
            raise InputError("yaml_alias", source, _field(path),
                             f"an alias refers to a node that contains it (line {node.start_mark.line + 1}): "
                             "the data would be infinite", "replace the alias by the value it should hold")
        expanded += 1
        distinct.add(id(node))
        if expanded - len(distinct) > MAX_ALIAS_NODES:
            raise InputError("yaml_alias", source, _field(path),
                             f"aliases expand the document beyond {MAX_ALIAS_NODES} extra nodes "
                             f"(an alias bomb?) near line {node.start_mark.line + 1}",
                             "write the values out, or use fewer nested aliases (&anchor / *alias)")
        if depth > MAX_DEPTH:
            raise InputError("malformed_yaml", source, _field(path),
                             f"nested deeper than {MAX_DEPTH} levels (line {node.start_mark.line + 1})",
                             "a strategy or catalog is a few levels deep; check the brackets")
        inner = enclosing | {id(node)}
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key, value in node.value:
                if key.tag == _MERGE_TAG:
                    stack.append((value, path + ["<<"], inner, depth + 1))
                    continue
                name = key.value if isinstance(key, yaml.ScalarNode) else f"<{key.id} key>"
                line = key.start_mark.line + 1
                ident = (key.tag, name) if isinstance(key, yaml.ScalarNode) else None
                if ident is not None and ident in seen:
                    raise InputError("duplicate_key", source, _field(path + [name]),
                                     f"the key {name!r} appears twice (lines {seen[ident]} and {line}); "
                                     "YAML would silently keep only the last one",
                                     "remove or merge one of them")
                if ident is not None:
                    seen[ident] = line
                stack.append((key, path + [name], inner, depth + 1))
                stack.append((value, path + [name], inner, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                stack.append((item, path + [index], inner, depth + 1))


def _decode(raw: bytes, source: str) -> str:
    if b"\0" in raw:
        offset = raw.index(b"\0")
        raise InputError("not_text", source, "-", f"is a binary file (a NUL byte at offset {offset}), not YAML",
                         "point at the YAML text file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError("not_text", source, "-",
                         f"is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line})",
                         "save the file as UTF-8") from None


def load_text(text: str | bytes, source: str, max_bytes: int = MAX_BYTES, construct: bool = True):
    """The data of one YAML document, or an InputError; `source` names the file in messages.
    construct=False only checks (Ansible's own tags, !vault and !unsafe, are not the safe loader's)."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if len(raw) > max_bytes:
        raise InputError("file_too_large", source, "-", f"is {len(raw)} bytes; the limit is {max_bytes} bytes",
                         "a strategy or catalog file is a few KiB: split it, or remove what is not YAML for gpufleet")
    text = _decode(raw, source) if isinstance(text, bytes) else text
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, source)
        return loader.construct_document(node) if construct else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "-"
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise InputError("malformed_yaml", source, where, f"cannot parse: {problem}",
                         "fix the YAML syntax") from None
    except yaml.YAMLError as exc:
        raise InputError("malformed_yaml", source, "-", f"cannot parse: {exc}", "fix the YAML syntax") from None
    except RecursionError:
        raise InputError("malformed_yaml", source, "-", "nested too deeply to read",
                         "a strategy or catalog is a few levels deep; check the brackets") from None
    finally:
        loader.dispose()


def load_file(path: str | Path, max_bytes: int = MAX_BYTES, what: str = "file", fix: str = "",
              construct: bool = True):
    """Read and parse one YAML file: at most `max_bytes` are read, whatever the file is."""
    source = str(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) and not stat.S_ISDIR(os.stat(path).st_mode):
            # a FIFO or a device would block or never end: only regular files are read
            raise InputError("missing_file", source, "-", f"the {what} is not a regular file",
                             fix or "give the path of a YAML file")
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        reason = "is a folder" if isinstance(exc, IsADirectoryError) else f"cannot be read: {exc.strerror}"
        raise InputError("missing_file", source, "-", f"the {what} {reason}",
                         fix or "give the path of a readable YAML file") from None
    if len(raw) > max_bytes:
        raise InputError("file_too_large", source, "-", f"is larger than the limit of {max_bytes} bytes",
                         "a strategy or catalog file is a few KiB: split it, or point at the right file")
    return load_text(raw, source, max_bytes, construct)


_INVENTORY_YAML = ("", ".yml", ".yaml", ".json")


def check_inventory(path: str | Path, max_bytes: int = MAX_BYTES) -> None:
    """The YAML an Ansible inventory is made of, checked as load_file checks a strategy (size, text,
    duplicate keys, alias bombs) before Ansible reads it: Ansible expands aliases when it copies
    host variables, and keeps the last of two keys with a warning only.

    Checked: a YAML inventory file, the YAML files of an inventory folder, and the group_vars/
    and host_vars/ folders beside them (files ending in .yml, .yaml, .json or nothing, as
    Ansible's vars plugin reads them). INI and script inventories are left to Ansible."""
    root = Path(path)
    if not root.exists():
        return
    base = root if root.is_dir() else root.parent
    candidates = [] if root.is_dir() else [root]
    if root.is_dir():
        candidates += [p for p in sorted(root.iterdir()) if p.is_file() and p.suffix in (".yml", ".yaml")]
    for vars_dir in (base / "group_vars", base / "host_vars"):
        if vars_dir.is_dir():
            candidates += [p for p in sorted(vars_dir.rglob("*"))
                           if p.is_file() and p.suffix in _INVENTORY_YAML and not p.name.startswith(".")]
    for candidate in candidates:
        if candidate.suffix not in (".yml", ".yaml", ".json") and candidate == root:
            continue  # an INI or script inventory named on the command line
        if candidate.suffix == "" and _looks_vaulted(candidate):
            continue
        load_file(candidate, max_bytes, what="inventory file", construct=False)


def _looks_vaulted(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(14) == b"$ANSIBLE_VAULT"
    except OSError:
        return False
