"""Ray label selectors (Ray >= 2.54 syntax): parsing, linting and matching node labels."""
from __future__ import annotations

import pytest

from gpufleet.label_selectors import SelectorError, Term, matches, parse_selector, parse_term

NODE0 = {"gpufleet.io/host": "node-0", "gpufleet.io/group": "head", "ray.io/accelerator-type": "A10"}
NODE1 = {"gpufleet.io/host": "node-1", "gpufleet.io/group": "worker", "gpufleet.io/pool": "cxr",
         "ray.io/accelerator-type": "A10"}
NODE2 = {"gpufleet.io/host": "node-2", "gpufleet.io/group": "worker", "ray.io/accelerator-type": "L4"}
NODES = {"node-0": NODE0, "node-1": NODE1, "node-2": NODE2}


def selected(selector: dict) -> list:
    terms = parse_selector(selector)
    return [name for name, labels in NODES.items() if matches(terms, labels)]


# ---- parsing ------------------------------------------------------------------------------
def test_equals_parses_to_one_value():
    assert parse_term("gpufleet.io/host", "node-0") == Term("gpufleet.io/host", frozenset({"node-0"}), False)


def test_not_equals_parses_negated():
    assert parse_term("gpufleet.io/host", "!node-0") == Term("gpufleet.io/host", frozenset({"node-0"}), True)


def test_in_and_not_in_parse_every_value():
    assert parse_term("k", "in(a,b,c)") == Term("k", frozenset({"a", "b", "c"}), False)
    assert parse_term("k", "!in(a,b)") == Term("k", frozenset({"a", "b"}), True)


# ---- matching -----------------------------------------------------------------------------
def test_equals_matches_only_that_value():
    assert selected({"gpufleet.io/host": "node-0"}) == ["node-0"]


def test_negation_matches_nodes_lacking_the_key():
    # only node-1 carries gpufleet.io/pool; "!cxr" keeps every node without it
    assert selected({"gpufleet.io/pool": "!cxr"}) == ["node-0", "node-2"]
    assert selected({"gpufleet.io/pool": "!other"}) == ["node-0", "node-1", "node-2"]
    assert selected({"gpufleet.io/host": "!node-0"}) == ["node-1", "node-2"]


def test_equals_never_matches_a_node_lacking_the_key():
    assert selected({"gpufleet.io/pool": "cxr"}) == ["node-1"]
    assert selected({"gpufleet.io/zone": "a"}) == []


def test_in_matches_any_listed_value():
    assert selected({"gpufleet.io/host": "in(node-0,node-2)"}) == ["node-0", "node-2"]
    assert selected({"gpufleet.io/pool": "in(cxr,gpu)"}) == ["node-1"]


def test_not_in_excludes_listed_values_and_keeps_nodes_lacking_the_key():
    assert selected({"gpufleet.io/host": "!in(node-0,node-2)"}) == ["node-1"]
    assert selected({"gpufleet.io/pool": "!in(cxr,gpu)"}) == ["node-0", "node-2"]


def test_all_keys_must_hold():
    assert selected({"gpufleet.io/group": "worker", "ray.io/accelerator-type": "A10"}) == ["node-1"]
    assert selected({"gpufleet.io/group": "worker", "gpufleet.io/pool": "!cxr"}) == ["node-2"]
    assert selected({"gpufleet.io/group": "head", "gpufleet.io/host": "node-1"}) == []


def test_empty_selector_matches_every_node():
    assert selected({}) == ["node-0", "node-1", "node-2"]


def test_ray_default_labels_are_allowed():
    assert selected({"ray.io/accelerator-type": "L4"}) == ["node-2"]


# ---- rejected -----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["in(a, b)", "in( a,b)", "!in(a,b )", "in(a,\tb)"])
def test_space_inside_in_is_rejected_with_the_fixed_form(value):
    with pytest.raises(SelectorError) as error:
        parse_term("gpufleet.io/host", value)
    message = str(error.value)
    assert "space inside in(...)" in message
    assert ("write !in(a,b)" if value.startswith("!") else "write in(a,b)") in message


@pytest.mark.parametrize("value", ["exists()", "!exists()"])
def test_exists_is_rejected(value):
    with pytest.raises(SelectorError, match=r"exists\(\)/!exists\(\) are not supported"):
        parse_term("gpufleet.io/pool", value)


@pytest.mark.parametrize("key", [
    "Bad Key",                    # space
    "gpufleet.io/",               # empty name
    "Gpufleet.io/host",           # uppercase prefix
    "-host",                      # not alphanumeric at the start
    "host-",                      # nor at the end
    "gpufleet.io/" + "a" * 64,    # name over 63 characters
    "a/b/c",                      # two slashes
    "",
])
def test_invalid_keys_are_rejected(key):
    with pytest.raises(SelectorError, match="is not a valid label key"):
        parse_term(key, "x")


def test_reserved_ray_prefix_is_rejected_unless_a_ray_default_label():
    with pytest.raises(SelectorError, match="reserved ray.io/ prefix"):
        parse_term("ray.io/custom", "x")
    assert parse_term("ray.io/node-id", "abc").key == "ray.io/node-id"


def test_longest_valid_key_name_and_value_are_accepted():
    name, value = "a" * 63, "v" * 63
    assert parse_term(f"gpufleet.io/{name}", value).values == frozenset({value})


@pytest.mark.parametrize("value", [
    "",                   # empty
    "!",                  # negation of nothing
    "in()",               # empty list
    "in(a,,b)",           # empty member
    "a b",                # space
    "-a",                 # not alphanumeric at the start
    "a-",                 # nor at the end
    "v" * 64,             # over 63 characters
    "a/b",                # slash
    "in(a,b",             # unclosed: read as a plain value, which is invalid
])
def test_invalid_values_are_rejected(value):
    with pytest.raises(SelectorError, match="is not a valid label value"):
        parse_term("gpufleet.io/host", value)


@pytest.mark.parametrize("value", [1, None, True, ["a", "b"]])
def test_non_string_values_are_rejected(value):
    with pytest.raises(SelectorError, match="must be a string"):
        parse_term("gpufleet.io/host", value)


def test_selector_must_be_a_mapping():
    with pytest.raises(SelectorError, match="is a mapping"):
        parse_selector(["gpufleet.io/host=node-0"])
