#!/bin/bash
# Build the e2e cluster's images into $CACHE/images without a container engine or registry:
#   pause.tar       the pod sandbox image (pause.c, static)
#   acceptance.tar  the acceptance image as the Containerfile's CPU variant lays it out (python, iperf3, fio;
#                   dcforge, workloads/ and loadtests/ at /opt/dcforge; a venv at /opt/venv on PATH; uid 1000):
#                   a Debian bookworm root filesystem from debootstrap (cached), the Python packages of the
#                   project's virtual environment (VENV; with PyPI's torch that includes its CUDA libraries, which
#                   `import torch` loads even on a CPU: ~5 GB) and the repository's code.
# usage: images.sh [VENV]   (default: the repository's .venv)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
REPO=$(cd "$HERE/../../.." && pwd)
VENV=${1:-$REPO/.venv}
SITE=$(ls -d "$VENV"/lib/python3.11/site-packages 2>/dev/null) ||
  { echo "images.sh: $VENV has no lib/python3.11/site-packages (the image's Python is Debian bookworm's 3.11)" >&2; exit 2; }
for t in debootstrap gcc chroot; do command -v $t >/dev/null || { echo "images.sh: '$t' not found (apt-get install debootstrap gcc)" >&2; exit 2; }; done
IMG=$CACHE/images; mkdir -p "$IMG"
ACCEPTANCE_IMAGE=$(sed -n 's/^ *image: *\([^ ]*\).*/\1/p' "$REPO/stacks/Pulumi.cluster.yaml" | head -1)

if [ ! -f "$IMG/pause.digest" ]; then
  mkdir -p "$IMG/pause-root"; gcc -static -Os -s -o "$IMG/pause-root/pause" "$HERE/pause.c"
  python3 "$HERE/mkimage.py" "$IMG/pause.tar" registry.k8s.io/pause:3.10 --add "$IMG/pause-root=/" --entrypoint '["/pause"]'
fi

ROOTFS=$IMG/bookworm-rootfs
if [ ! -f "$ROOTFS/.complete" ]; then
  rm -rf "$ROOTFS"
  nice -n 10 debootstrap --variant=minbase --include=python3,iperf3,fio bookworm "$ROOTFS" >"$IMG/debootstrap.log" 2>&1 ||
    { echo "images.sh: debootstrap failed (log: $IMG/debootstrap.log)" >&2; exit 1; }
  chroot "$ROOTFS" sh -c 'groupadd --gid 1000 dcforge && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp dcforge'
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/{doc,man,info,locale}
  touch "$ROOTFS/.complete"
fi

# /opt/venv as `python3 -m venv` makes it, its site-packages from VENV; /opt/dcforge on its path (.pth)
V=$IMG/venv-skeleton; rm -rf "$V"; mkdir -p "$V/bin" "$V/lib/python3.11"
ln -s /usr/bin/python3 "$V/bin/python3"; ln -s python3 "$V/bin/python"
printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n' > "$V/pyvenv.cfg"
C=$IMG/code; rm -rf "$C" "$IMG/code-path"; mkdir -p "$C" "$IMG/code-path"
echo /opt/dcforge > "$IMG/code-path/dcforge-code.pth"
for d in dcforge workloads loadtests; do cp -r "$REPO/$d" "$C/$d"; done
cp "$REPO/pyproject.toml" "$REPO/constraints.txt" "$C/"
nice -n 10 python3 "$HERE/mkimage.py" "$IMG/acceptance.tar" "$ACCEPTANCE_IMAGE" \
  --add "$ROOTFS=/" --add "$V=/opt/venv" --add "$SITE=/opt/venv/lib/python3.11/site-packages" \
  --add "$IMG/code-path=/opt/venv/lib/python3.11/site-packages" --add "$C=/opt/dcforge" \
  --exclude '.complete' --exclude 'triton*' --exclude 'ansible_collections' \
  --exclude '__editable__*' --exclude 'dcforge-*.dist-info' \
  --env PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env PYTHONUNBUFFERED=1 --env PYTHONDONTWRITEBYTECODE=1 --env HOME=/tmp \
  --user 1000:1000 --workdir /opt/dcforge
