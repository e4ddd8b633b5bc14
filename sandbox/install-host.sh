#!/usr/bin/env bash
# Prepare the controller to run the sandbox cluster (podman containers booting
# systemd). Idempotent: safe to run again; reruns change nothing.
#
#   sudo bash sandbox/install-host.sh
#
# What it does:
#   1. installs podman, runc, debootstrap, systemd (tests/test_systemd_quote.py
#      parses units with `systemd --test`) and prometheus (for its promtool: the
#      alert rules' tests and the plan textfile's check, tests/test_monitoring_*.py;
#      no Prometheus server runs on the controller) and openssh-client (Ansible
#      reaches the sandbox nodes over SSH; sandbox_up.yml makes its key with
#      ssh-keygen) from the Debian archive (skipped when they are already there);
#   2. makes podman use runc and container ulimits the kernel accepts here, by
#      setting two keys in /etc/containers/containers.conf and leaving every
#      other setting of that file untouched:
#        [engine]     runtime = "runc"
#        [containers] default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
#      (crun fails on hosts with hybrid cgroups, and podman's default
#      RLIMIT_NOFILE / RLIMIT_NPROC are refused in unprivileged sandboxes).
set -euo pipefail

CONF=${GPUFLEET_CONTAINERS_CONF:-/etc/containers/containers.conf}
PACKAGES=(podman runc debootstrap systemd prometheus openssh-client)

if [[ $(id -u) -ne 0 ]]; then
    echo "install-host.sh: run as root (apt-get and $CONF need it)" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    echo "install-host.sh: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "install-host.sh: ${PACKAGES[*]} already installed"
fi

mkdir -p "$(dirname "$CONF")"
touch "$CONF"

# Set keys in a TOML file in place: replace the key when its table already
# holds it (also a multi-line array), add it to the table otherwise, add the
# table when missing. Comments and unrelated keys stay as they are.
python3 - "$CONF" <<'PY'
import re
import sys

path = sys.argv[1]
wanted = {
    "engine": {"runtime": '"runc"'},
    "containers": {"default_ulimits": '["nofile=20000:20000", "nproc=4096:4096"]'},
}

with open(path, encoding="utf-8") as fh:
    lines = fh.read().splitlines()

header = re.compile(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$")


def table_bounds(name):
    start = None
    for i, line in enumerate(lines):
        m = header.match(line)
        if m and start is None and m.group(1).strip() == name:
            start = i
        elif (m or line.lstrip().startswith("[[")) and start is not None:
            return start, i
    return (start, len(lines)) if start is not None else (None, None)


for table, keys in wanted.items():
    for key, value in keys.items():
        new_line = f"{key} = {value}"
        start, end = table_bounds(table)
        if start is None:
            if lines and lines[-1].strip():
                lines.append("")
            lines += [f"[{table}]", new_line]
            continue
        key_re = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for i in range(start + 1, end):
            if key_re.match(lines[i]):
                j = i
                # a multi-line array ends at the line that closes it
                if lines[i].count("[") > lines[i].count("]"):
                    depth = lines[i].count("[") - lines[i].count("]")
                    while depth > 0 and j + 1 < end:
                        j += 1
                        depth += lines[j].count("[") - lines[j].count("]")
                lines[i:j + 1] = [new_line]
                break
        else:
            lines.insert(start + 1, new_line)

text = "\n".join(lines) + "\n"
with open(path, encoding="utf-8") as fh:
    old = fh.read()
if text != old:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"install-host.sh: updated {path}")
else:
    print(f"install-host.sh: {path} already configured")
PY

# Check that podman can actually start a container with this configuration
# later on: it must report runc as its runtime.
runtime=$(podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null || true)
if [[ "$runtime" != "runc" ]]; then
    echo "install-host.sh: podman reports OCI runtime '${runtime:-?}', expected runc" >&2
    exit 1
fi
echo "install-host.sh: podman $(podman version --format '{{.Client.Version}}') with runc is ready"
