"""Reading and writing the tensor files of Hugging Face checkpoints, one tensor at a time.

safetensors files are memory-mapped (the `safetensors` package's numpy reader has no bfloat16, so
the documented header is parsed here and the data viewed in place); `.bin` files go through
`torch.load(weights_only=True, mmap=True)`. Nothing holds a whole checkpoint in host memory.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import ml_dtypes
import numpy as np

from teacherlm_jax.errors import CheckpointError

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class TensorSource:
    """Name -> numpy tensor over all files of a checkpoint directory, opened lazily."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._file_of: dict[str, Path] = {}
        self._loaders: dict[Path, Callable[[str], np.ndarray]] = {}
        files = _weight_files(self.directory)
        for path in files:
            for name in _list_names(path):
                self._file_of[name] = path

    def names(self) -> list[str]:
        return list(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def get(self, name: str) -> np.ndarray:
        path = self._file_of.get(name)
        if path is None:
            raise CheckpointError(f"{self.directory}: tensor {name!r} is missing from the checkpoint")
        if path not in self._loaders:
            self._loaders[path] = _open(path)
        return self._loaders[path](name)


def _weight_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid index file ({e})") from e
            files = [directory / f for f in dict.fromkeys(weight_map.values())]
            missing = [str(f) for f in files if not f.exists()]
            if missing:
                raise CheckpointError(f"{index}: lists shard files that do not exist: {missing}")
            return files
    for pattern in ("model.safetensors", "*.safetensors", "pytorch_model.bin", "pytorch_model*.bin"):
        files = sorted(directory.glob(pattern))
        if files:
            return files
    raise CheckpointError(
        f"{directory}: no weights found (expected model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or pytorch_model.bin.index.json)")


def _read_safetensors_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise CheckpointError(f"{path}: corrupt safetensors header (length {header_len} > file size {size})")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from e
    header.pop("__metadata__", None)
    for name, info in header.items():
        end = info["data_offsets"][1] + 8 + header_len
        if end > size:
            raise CheckpointError(f"{path}: tensor {name!r} extends past the end of the file (truncated download?)")
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    return header, 8 + header_len


def _list_names(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        return list(_read_safetensors_header(path)[0])
    return list(_torch_load(path))


def _open(path: Path) -> Callable[[str], np.ndarray]:
    if path.suffix == ".safetensors":
        header, data_start = _read_safetensors_header(path)
        buffer = np.memmap(path, dtype=np.uint8, mode="r")

        def get(name: str) -> np.ndarray:
            info = header[name]
            begin, end = info["data_offsets"]
            raw = buffer[data_start + begin:data_start + end]
            return raw.view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])

        return get
    tensors = _torch_load(path)

    def get_torch(name: str) -> np.ndarray:
        import torch

        t = tensors[name]
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    return get_torch


def _torch_load(path: Path) -> dict:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"{path}: reading .bin checkpoints needs torch (pip install torch)") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for corrupt/unsafe pickles
        raise CheckpointError(f"{path}: cannot be read safely with torch.load(weights_only=True): {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def write_safetensors(tensors: Iterable[tuple[str, np.ndarray]], directory: str | os.PathLike,
                      max_shard_bytes: int = 2 * 1024**3) -> list[Path]:
    """Writes (name, array) pairs into shards of at most `max_shard_bytes` (one in memory at a time),
    plus an index when there is more than one; names follow transformers' conventions."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    temporary: list[Path] = []
    weight_map: dict[str, int] = {}
    current: dict[str, np.ndarray] = {}
    size = 0

    def flush() -> None:
        path = directory / f".shard-{len(temporary) + 1:05d}.safetensors.tmp"
        save_file(current, str(path), metadata={"format": "pt"})
        temporary.append(path)

    for name, array in tensors:
        array = np.ascontiguousarray(array)
        if current and size + array.nbytes > max_shard_bytes:
            flush()
            current, size = {}, 0
        current[name] = array
        weight_map[name] = len(temporary) + 1
        size += array.nbytes
    flush()

    total = len(temporary)
    if total == 1:
        names = {1: "model.safetensors"}
        (directory / "model.safetensors.index.json").unlink(missing_ok=True)
    else:
        names = {i: f"model-{i:05d}-of-{total:05d}.safetensors" for i in range(1, total + 1)}
        index = {"metadata": {}, "weight_map": {k: names[v] for k, v in weight_map.items()}}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for i, path in enumerate(temporary, start=1):
        path.replace(directory / names[i])
    return [directory / names[i] for i in range(1, total + 1)]
