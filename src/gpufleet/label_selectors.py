"""Ray label selectors (Ray >= 2.54): parse, lint and match against node labels.

Values: "v" (equals), "!v" (not equal), "in(a,b)", "!in(a,b)". All keys must hold.
A negation matches nodes that lack the key. Ray's C++ parser does not trim, so a
space inside in(...) passes Ray's Python validation and then never matches: we
refuse it. exists()/!exists() are rejected by Ray 2.60, so they are here too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
# Use fullmatch (or \Z): `$` also matches before a trailing newline, so "node-0\n" passed `^...$`.
KEY_RE = re.compile(rf"({_PREFIX}/)?{_NAME}\Z")
VALUE_RE = re.compile(rf"({_NAME})?\Z")
_IN_RE = re.compile(r"(!?)in\((.*)\)\Z", re.DOTALL)


@dataclass(frozen=True)
class Term:
    key: str
    values: frozenset
    negated: bool

    def matches(self, labels: dict) -> bool:
        present = self.key in labels and labels[self.key] in self.values
        return not present if self.negated else present


class SelectorError(ValueError):
    """A selector Ray would reject, or one that would silently never match."""


def parse_term(key: str, raw) -> Term:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key) or len(key.split("/")[-1]) > 63 or len(key) > 317:
        raise SelectorError(f"key {key!r} is not a valid label key (optional DNS prefix/ of <=253, "
                            f"then <=63 of [A-Za-z0-9_.-])")
    if key.startswith("ray.io/") and key not in ("ray.io/node-id", "ray.io/accelerator-type",
                                                  "ray.io/market-type", "ray.io/availability-zone",
                                                  "ray.io/region"):
        raise SelectorError(f"key {key!r} uses the reserved ray.io/ prefix and is not a Ray default label")
    if not isinstance(raw, str):
        raise SelectorError(f"value of {key!r} must be a string, got {raw!r}")
    if "exists(" in raw:
        raise SelectorError(f"{key}: {raw!r}: exists()/!exists() are not supported by Ray 2.60")
    match = _IN_RE.match(raw)
    if match:
        negated, inner = match.group(1) == "!", match.group(2)
        if " " in inner or "\t" in inner:
            raise SelectorError(f"{key}: {raw!r} has a space inside in(...): Ray's parser does not trim, "
                                f"so it never matches; write "
                                f"{match.group(1)}in({','.join(v.strip() for v in inner.split(','))})")
        values = inner.split(",")
    else:
        negated = raw.startswith("!")
        values = [raw[1:] if negated else raw]
    for value in values:
        if not value or not VALUE_RE.fullmatch(value):
            raise SelectorError(f"{key}: {raw!r}: value {value!r} is not a valid label value "
                                f"(1-63 of [A-Za-z0-9_.-], alphanumeric at both ends)")
    return Term(key, frozenset(values), negated)


def parse_selector(selector: dict) -> tuple[Term, ...]:
    if not isinstance(selector, dict):
        raise SelectorError(f"a label selector is a mapping of label key to value, got {selector!r}")
    return tuple(parse_term(k, v) for k, v in selector.items())


def matches(terms: tuple[Term, ...], labels: dict) -> bool:
    return all(term.matches(labels) for term in terms)
