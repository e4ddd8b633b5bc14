#!/usr/bin/env bash
# Build the sandbox node image: a Debian bookworm root file system made with
# debootstrap, booting systemd, imported into podman as
#
#   localhost/gpufleet-node:<first 12 hex digits of sha256 of this script>
#
# No registry is needed. The tag changes whenever this script (and so the
# package list below) changes; an image with the current tag is never rebuilt.
#
#   sudo bash sandbox/build-image.sh              # build if missing, print the image ref last
#   bash sandbox/build-image.sh --print-ref       # only print the image ref
#
# Environment:
#   GPUFLEET_CACHE       cache root (default ~/.cache/gpufleet); debootstrap's
#                        package cache lives in $GPUFLEET_CACHE/debootstrap
#   GPUFLEET_DEB_MIRROR  Debian mirror (default http://deb.debian.org/debian);
#                        not part of the image tag
#
# Output: progress on stderr; the last line on stdout is the image reference,
# preceded by "built" or "cached" on the line before it.
set -euo pipefail

SUITE=bookworm
IMAGE_NAME=localhost/gpufleet-node
# What the roles need on a node: systemd as PID 1, python3 for Ansible and the
# Ray venv, pip/venv, ca-certificates, iproute2/procps/curl for diagnostics and
# health checks, sudo for plays that use become, python3-apt so that
# ansible.builtin.apt can check installed packages. prometheus and
# prometheus-node-exporter are what the monitoring role installs with apt on real
# hosts (Debian's packages); baked in here so that the sandbox needs no apt run and
# the role's apt task finds them present. Their units are not enabled in the image:
# the role enables Prometheus on its server and the node exporter everywhere.
# openssh-server: Ansible reaches the nodes over SSH with pipelining, as on real
# hosts (one round trip per task; the podman connection cannot pipeline and made a
# no-op apply take 84 s instead of 28 s).
PACKAGES=systemd,systemd-sysv,dbus,iproute2,python3,python3-venv,python3-pip,procps,ca-certificates,curl,sudo,python3-apt,libnuma1,prometheus,prometheus-node-exporter,openssh-server
# Units the packages enable that the roles, not the image, decide to run.
DISABLE_UNITS=(prometheus.service prometheus-node-exporter.service)
# Units that have nothing to do in a container and only make boot "degraded".
MASK_UNITS=(systemd-remount-fs.service getty@tty1.service console-getty.service apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service)

SELF=$(readlink -f "${BASH_SOURCE[0]}")
RECIPE_HASH=$(sha256sum "$SELF" | cut -c1-12)
IMAGE_REF="$IMAGE_NAME:$RECIPE_HASH"
CACHE=${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}
MIRROR=${GPUFLEET_DEB_MIRROR:-http://deb.debian.org/debian}

log() { echo "build-image.sh: $*" >&2; }

if [[ "${1:-}" == "--print-ref" ]]; then
    echo "$IMAGE_REF"
    exit 0
fi

if podman image exists "$IMAGE_REF"; then
    log "image $IMAGE_REF exists, nothing to do"
    echo cached
    echo "$IMAGE_REF"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    log "run as root (debootstrap needs it)"
    exit 1
fi

mkdir -p "$CACHE/debootstrap"
exec 9>"$CACHE/build-image.lock"
flock 9
# Another run may have built it while this one waited for the lock.
if podman image exists "$IMAGE_REF"; then
    log "image $IMAGE_REF exists, nothing to do"
    echo cached
    echo "$IMAGE_REF"
    exit 0
fi

ROOTFS="$CACHE/rootfs-$RECIPE_HASH"
cleanup() { rm -rf --one-file-system "$ROOTFS"; }
trap cleanup EXIT
cleanup

start=$(date +%s)
log "debootstrap $SUITE ($PACKAGES) into $ROOTFS"
debootstrap --variant=minbase --include="$PACKAGES" \
    --cache-dir="$CACHE/debootstrap" \
    "$SUITE" "$ROOTFS" "$MIRROR" >&2

# Container-specific touches.
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$ROOTFS/etc/apt/sources.list"
for unit in "${MASK_UNITS[@]}"; do
    ln -sf /dev/null "$ROOTFS/etc/systemd/system/$unit"
done
for unit in "${DISABLE_UNITS[@]}"; do
    rm -f "$ROOTFS/etc/systemd/system/multi-user.target.wants/$unit"
done
# podman writes /etc/hostname and /etc/hosts at start; an empty machine-id
# makes systemd generate one per container on first boot.
: >"$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/var/lib/dbus/machine-id"
# Each container makes its own SSH host keys on first boot (the image holds none);
# playbooks/sandbox_up.yml reads them into the controller's known_hosts for the sandbox.
rm -f "$ROOTFS"/etc/ssh/ssh_host_*
mkdir -p "$ROOTFS/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
    >"$ROOTFS/etc/systemd/system/ssh.service.d/host-keys.conf"
printf 'recipe=%s\nsuite=%s\npackages=%s\n' "$RECIPE_HASH" "$SUITE" "$PACKAGES" >"$ROOTFS/etc/gpufleet-image"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log

log "importing as $IMAGE_REF"
tar --numeric-owner -C "$ROOTFS" -c . |
    podman import \
        --change 'CMD ["/sbin/init"]' \
        --change 'STOPSIGNAL SIGRTMIN+3' \
        --change 'LABEL gpufleet.sandbox=1' \
        --change "LABEL gpufleet.recipe=$RECIPE_HASH" \
        --message "gpufleet sandbox node ($SUITE, recipe $RECIPE_HASH)" \
        - "$IMAGE_REF" >&2

log "built $IMAGE_REF in $(($(date +%s) - start)) s ($(podman image inspect --format '{{.Size}}' "$IMAGE_REF") bytes)"
echo built
echo "$IMAGE_REF"
