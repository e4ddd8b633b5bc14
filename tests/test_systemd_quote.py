"""Values rendered into ExecStart= and Environment= reach the process exactly as they were given.

The quoting filters (plugins/filter/gpufleet.py) are checked twice: against systemd's documented
rules (systemd.service(5) "Command lines", systemd.exec(5) "Environment=", systemd.unit(5)
"Specifiers"), and through systemd itself: `systemd --test --system --unit=X` loads a unit
without running a manager (no PID 1 needed) and dumps how it parsed ExecStart= and
Environment=. The real units are rendered from the roles' templates by ansible-playbook with
hostile values and parsed the same way.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def load_filters():
    """plugins/filter/gpufleet.py as a module of its own name (it is not the gpufleet package)."""
    spec = importlib.util.spec_from_file_location("gpufleet_filter_plugin", REPO / "plugins/filter/gpufleet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


filters = load_filters()

BIN = Path(sys.executable).parent
SYSTEMD = Path("/lib/systemd/systemd")
ENV = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}

# Values an inventory or a strategy could carry, each meant to arrive as one argv word.
HOSTILE = [
    "10.0.0.1; rm -rf /", "a b", "  lead and trail  ", "$HOME", "${HOME}", "$$", "%n", "50%", "%%",
    'q"uote', "back\\slash", "\\", "'single'", ";", "", "tab\tx", "ünï côdé", "a=b,c=d", "--flag=x y",
    "new\nline", "\x01ctl",
]


def _filters_module():
    return filters


# ---- systemd's documented rules ------------------------------------------------------------------
@pytest.mark.parametrize("value, quoted", [
    ("plain", "plain"),
    ("--node-ip-address=10.0.0.1", "--node-ip-address=10.0.0.1"),
    ("--labels=a/b=c,d=e", "--labels=a/b=c,d=e"),
    ("a b", '"a b"'),
    ("", '""'),
    ("$HOME", '"$$HOME"'),            # variables are expanded at start: $$ is a literal $
    ("${HOME}", '"$${HOME}"'),
    ("50%", '"50%%"'),                # specifiers: %% is a literal %
    ('a"b', '"a\\"b"'),               # C escapes inside double quotes
    ("a\\b", '"a\\\\b"'),
    ("x;y", '"x;y"'),
    ("new\nline", '"new\\nline"'),
    ("\x01", '"\\x01"'),
])
def test_quote_follows_the_documented_rules(value, quoted):
    assert _filters_module().systemd_quote(value) == quoted


def test_environment_keeps_dollars_and_escapes_the_rest():
    f = _filters_module()
    assert f.systemd_environment("HOME", "/var/lib/ray") == '"HOME=/var/lib/ray"'
    assert f.systemd_environment("A", 'x$y%z"w\\v') == '"A=x$y%%z\\"w\\\\v"'
    with pytest.raises(f.AnsibleFilterError, match="not"):
        f.systemd_environment("BAD NAME", "x")


def test_executable_must_be_a_plain_absolute_path():
    f = _filters_module()
    assert f.systemd_executable("/opt/gpufleet/ray-venv/bin/ray") == "/opt/gpufleet/ray-venv/bin/ray"
    assert f.systemd_executable("/opt/my tools/50%/ray") == '"/opt/my tools/50%%/ray"'
    for bad in ("relative/ray", '/opt/"x"/ray', "/opt/$X/ray", "/opt/a\\b", "/opt/a\nb"):
        with pytest.raises(f.AnsibleFilterError):
            f.systemd_executable(bad)


# ---- systemd itself -----------------------------------------------------------------------------
def _display_words(line: str) -> list:
    """argv from systemd's dump ("Command Line: ..."): words separated by spaces, quoted ones in
    double quotes with C escapes (\\n, \\t, \\ooo octal bytes, \\" \\\\ \\$)."""
    words, i = [], 0
    simple = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11}
    while i < len(line):
        if line[i] == " ":
            i += 1
            continue
        if line[i] != '"':
            end = line.find(" ", i)
            end = len(line) if end < 0 else end
            words.append(line[i:end])
            i = end
            continue
        i += 1
        out = bytearray()
        while line[i] != '"':
            c = line[i]
            if c == "\\":
                n = line[i + 1]
                if n in simple:
                    out.append(simple[n])
                    i += 2
                elif n.isdigit():
                    out.append(int(line[i + 1:i + 4], 8))
                    i += 4
                else:
                    out += n.encode()
                    i += 2
            else:
                out += c.encode()
                i += 1
        i += 1
        words.append(out.decode())
    return words


def systemd_parse(unit_text: str, name: str = "gpufleet-quote-test.service") -> dict:
    """How systemd parses a unit: {"exec": [argv before variable expansion, ...], "environment": [...]}."""
    assert SYSTEMD.exists(), "systemd is not installed: apt-get install systemd (sandbox/install-host.sh does)"
    folder = Path(tempfile.mkdtemp(prefix="gpufleet-systemd-"))
    try:
        folder.chmod(0o755)
        # Only this folder is searched: the targets the test transaction needs are stubs.
        for stub in ("sysinit.target", "system.slice"):
            (folder / stub).write_text("[Unit]\nDescription=stub\n")
            (folder / stub).chmod(0o644)
        unit = folder / name
        unit.write_text(unit_text)
        unit.chmod(0o644)
        command = [str(SYSTEMD), "--test", "--system", f"--unit={name}", "--no-pager"]
        if os.geteuid() == 0:  # systemd --test refuses to run as root outside PID 1
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"] + command
        run = subprocess.run(command, capture_output=True, text=True, timeout=60,
                             env={"PATH": os.environ.get("PATH", ""), "SYSTEMD_UNIT_PATH": str(folder),
                                  "SYSTEMD_LOG_TARGET": "console"})
    finally:
        shutil.rmtree(folder)
    dump = run.stdout.split(f"-> Unit {name}:", 1)
    assert len(dump) == 2, run.stdout[-2000:] + run.stderr[-2000:]
    body = re.split(r"\n\t-> Unit ", dump[1], maxsplit=1)[0]
    assert "bad unit file setting" not in run.stderr and f"{name}:" not in run.stderr, run.stderr
    return {"exec": [_display_words(m) for m in re.findall(r"Command Line: (.*)", body)],
            "environment": re.findall(r"\n\t\tEnvironment: (.*)", body)}


def exec_time(word: str) -> str:
    """What systemd does to an argument when the process starts (systemd.service(5)): `$$` is a
    literal `$`; `${NAME}` (or `$NAME` as a word) is replaced by a variable, marked here."""
    out, i = [], 0
    while i < len(word):
        if word.startswith("$$", i):
            out.append("$")
            i += 2
        elif word[i] == "$" and i + 1 < len(word) and (word[i + 1] == "{" or word[i + 1].isalpha()
                                                        or word[i + 1] == "_"):
            out.append("<expanded by systemd>")
            i += 1
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


def test_systemd_reads_every_quoted_argument_back():
    f = _filters_module()
    line = "ExecStart=/bin/echo " + " ".join(f.systemd_quote(v) for v in HOSTILE)
    parsed = systemd_parse(f"[Service]\n{line}\n")
    (argv,) = parsed["exec"]
    assert [exec_time(w) for w in argv[1:]] == HOSTILE


def test_unquoted_values_would_have_been_split_or_expanded():
    """The same values without quoting: systemd splits and expands them (the bug)."""
    parsed = systemd_parse("[Service]\nExecStart=/bin/echo --node-ip-address=not an ip; rm -rf / 50%%\n")
    (argv,) = parsed["exec"]
    assert argv[1:] != ["--node-ip-address=not an ip; rm -rf /", "50%"]
    assert "--node-ip-address=not" in argv


def test_systemd_reads_every_environment_value_back():
    f = _filters_module()
    values = [v for v in HOSTILE if "\n" not in v]  # the dump prints a newline as it is
    lines = "".join(f"Environment={f.systemd_environment(f'V{i}', v)}\n" for i, v in enumerate(values))
    parsed = systemd_parse(f"[Service]\n{lines}ExecStart=/bin/true\n")
    assert parsed["environment"] == [f"V{i}={v}" for i, v in enumerate(values)]


# ---- the roles' real templates, rendered with hostile values ---------------------------------------
def _render(template: str, variables: dict, tmp_path: Path) -> str:
    dest = tmp_path / "unit.service"
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "tasks": [{"name": "Render", "ansible.builtin.template": {"src": str(REPO / template), "dest": str(dest),
                                                                     "mode": "0644"}}],
    }]))
    extra = tmp_path / "vars.yml"
    extra.write_text(yaml.safe_dump({**variables, "ansible_python_interpreter": sys.executable}, allow_unicode=True))
    run = subprocess.run([BIN / "ansible-playbook", "-i", "localhost,", playbook, "-e", f"@{extra}"],
                         cwd=REPO, env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return dest.read_text()


def test_ray_unit_passes_hostile_values_as_single_arguments(tmp_path):
    node_ip = "not an ip; rm -rf /"
    args = ["--head", f"--node-ip-address={node_ip}", "--labels=k=v w", "--num-cpus=$HOME", "--x=50%"]
    unit = _render("roles/ray/templates/ray.service.j2", {
        "_ray_node": {"group": "head", "host": "node-0"}, "ray_user": "ray", "gpufleet_ray_group": "ray",
        "ray_home": "/var/lib/ray", "_ray_environment": {"RAY_AUTH_MODE": "token", "ODD": 'a"b$c%d'},
        "_ray_binary": "/opt/gpufleet/ray venv/bin/ray", "_ray_start_args": args, "ray_restart_sec": 5,
    }, tmp_path)
    parsed = systemd_parse(unit)
    start, stop = parsed["exec"]
    assert start[0] == "/opt/gpufleet/ray venv/bin/ray"
    assert [exec_time(w) for w in start[1:]] == ["start", "--block"] + args
    assert stop == ["/opt/gpufleet/ray venv/bin/ray", "stop"]
    assert 'ODD=a"b$c%d' in parsed["environment"]


def test_ollama_unit_passes_hostile_values_as_written(tmp_path):
    unit = _render("templates/ollama.service.j2", {
        "ollama_unit": {"service": "x", "tag": "t", "environment": {"OLLAMA_KEEP_ALIVE": "5m; rm -rf /",
                                                                    "OLLAMA_HOST": "127.0.0.1:11435"}},
        "_ollama_binary": "/opt/ollama/0.1 %x/bin/ollama", "ollama_user": "ollama", "ollama_group": "ollama",
        "ollama_home": "/var/lib/ollama", "ollama_models_dir": "/var/lib/ollama/models",
        "_ollama_base_environment": {"OLLAMA_MODELS": "/var/lib/ollama/models"}, "ollama_device_allow": [],
    }, tmp_path)
    parsed = systemd_parse(unit)
    assert parsed["exec"] == [["/opt/ollama/0.1 %x/bin/ollama", "serve"]]
    assert "OLLAMA_KEEP_ALIVE=5m; rm -rf /" in parsed["environment"]
    assert "OLLAMA_HOST=127.0.0.1:11435" in parsed["environment"]
