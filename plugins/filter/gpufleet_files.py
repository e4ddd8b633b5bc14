# Quick digests of controller-side folders, so that a role ships a folder only when it changed.
from __future__ import annotations

import hashlib
import os

from ansible.errors import AnsibleFilterError


def tree_digest(path, by_content: bool = False) -> str:
    """sha256 over every file's relative path, size and mtime (rsync's quick check), not its bytes:
    reading 600 MB of model weights on the controller and again on each node, for every host and
    every run, is what `copy`'s own idempotence check costs. by_content: over the bytes instead
    (small folders, such as a role, whose mtimes differ between checkouts)."""
    root = os.path.abspath(str(path))
    if not os.path.isdir(root):
        raise AnsibleFilterError(f"{root}: not a folder on the controller")
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(folder, name)
            if by_content:
                with open(full, "rb") as f:
                    stamp = hashlib.sha256(f.read()).hexdigest()
            else:
                st = os.stat(full)
                stamp = f"{st.st_size}\0{st.st_mtime_ns}"
            digest.update(f"{os.path.relpath(full, root)}\0{stamp}\n".encode())
    return "sha256:" + digest.hexdigest()


class FilterModule:
    def filters(self):
        return {"gpufleet_tree_digest": tree_digest}
