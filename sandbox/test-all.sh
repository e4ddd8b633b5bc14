#!/usr/bin/env bash
# Everything `make test` runs, in order, each stage timed; stops at the first failing stage and
# always removes the sandbox cluster at the end (even on failure or Ctrl-C).
#
#   unit            pytest -m "not sandbox"
#   lint            make lint: ruff check (pyproject.toml) and ansible-lint (production profile)
#   ray_cluster     molecule test -s ray_cluster  (creates the sandbox cluster, keeps it)
#   serve           molecule test -s serve        (same cluster)
#   ollama          molecule test -s ollama       (same cluster)
#   sandbox-pytest  pytest -m sandbox             (gpufleet apply/status/diff/rollback on the same cluster)
#   sandbox-down    playbooks/sandbox_down.yml
#
# The scenarios run with --destroy=never so that they share one cluster; each still runs its own
# create (playbooks/sandbox_up.yml, idempotent; molecule's saved state is reset first so that create
# always runs) and works alone with a plain `molecule test -s NAME`.
# Stage times go to $GPUFLEET_TEST_TIMES (default runs/test-times.txt) and are printed at the end.
# STAGES="serve ollama" bash sandbox/test-all.sh runs a subset (sandbox-down always runs).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$ROOT/ansible.cfg"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
TIMES=${GPUFLEET_TEST_TIMES:-$ROOT/runs/test-times.txt}
mkdir -p "$(dirname "$TIMES")"
: > "$TIMES"
STAGES=${STAGES:-"unit lint ray_cluster serve ollama sandbox-pytest"}
START=$(date +%s)

record() {  # name seconds rc
    printf '%-16s %5ss  %s\n' "$1" "$2" "$([ "$3" = 0 ] && echo ok || echo "FAILED (rc $3)")" >> "$TIMES"
}

run_stage() {  # name command...
    local name=$1 t0 rc
    shift
    echo "=== $name: $*"
    t0=$(date +%s)
    "$@"
    rc=$?
    record "$name" $(( $(date +%s) - t0 )) "$rc"
    return "$rc"
}

finish() {
    local rc=$?
    trap - EXIT INT TERM
    run_stage sandbox-down ansible-playbook playbooks/sandbox_down.yml || rc=1
    printf '%-16s %5ss\n' total $(( $(date +%s) - START )) >> "$TIMES"
    echo "=== stage times ($TIMES)"
    cat "$TIMES"
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

for stage in $STAGES; do
    case $stage in
        unit) run_stage unit pytest -q -m "not sandbox" ;;
        lint) run_stage lint make --no-print-directory lint ;;
        # molecule reset first: its saved state may say "created" for a cluster that
        # sandbox-down has since removed (create would then be skipped).
        ray_cluster|serve|ollama)
            molecule reset -s "$stage" > /dev/null 2>&1
            run_stage "$stage" molecule test -s "$stage" --destroy=never ;;
        sandbox-pytest) run_stage sandbox-pytest pytest -q -m sandbox -x --durations=0 ;;
        *) echo "unknown stage $stage" >&2; false ;;
    esac || exit 1
done
