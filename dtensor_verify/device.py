"""Which device the model and every tensor of the pipeline live on.

    resolve_device("auto")     # cuda when a GPU is visible, else cpu
    resolve_device("cpu" | "cuda" | "cuda:1" | torch.device(...))

Under torchrun (WORLD_SIZE > 1) each rank keeps its own GPU, `cuda:$LOCAL_RANK`, for `auto` and
`cuda`; a fixed `cuda:N` would put every rank on the same GPU, so it is refused there.
"""
from __future__ import annotations

import os

import torch

from .errors import DeviceError

CHOICES = "auto, cpu, cuda or cuda:N"


def _world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _no_gpu_reason() -> str:
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is built without CUDA"
    return "no CUDA GPU is visible (torch.cuda.is_available() is False)"


ALLOC_CONF = "expandable_segments:True"


def _cuda_device(index: int | None, what: str) -> torch.device:
    # CUDA's caching allocator in growable segments, set before CUDA starts (`current_device`,
    # `set_device`) for every entry point that picks a GPU: branch and bound's rounds change size
    # every round, and fixed segments left 1-2 GiB "reserved but unallocated" when a process next to
    # others on one GPU ran out of memory (TinyYOLO, session 10). A value the user set is kept; where
    # CUDA has started already it changes nothing.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", ALLOC_CONF)
    if not torch.cuda.is_available():
        raise DeviceError(f"{what}: {_no_gpu_reason()}; use --device cpu (or auto)")
    count = torch.cuda.device_count()
    if index is None:
        if _world_size() > 1:
            index = int(os.environ.get("LOCAL_RANK", "0"))
            if index >= count:
                raise DeviceError(f"{what}: this rank's LOCAL_RANK is {index} but only {count} GPU(s) are "
                                  "visible; start at most that many ranks per node, or use --device cpu")
        else:
            index = torch.cuda.current_device()
    if not 0 <= index < count:
        raise DeviceError(f"{what}: there is no GPU cuda:{index} ({count} visible: cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def resolve_device(spec="auto", what: str | None = None) -> torch.device:
    """A concrete torch.device for `spec` (see the module docstring). `what` names the option in
    error messages (default: the spec itself)."""
    what = what or f"device '{spec}'"
    if isinstance(spec, torch.device):
        # A torch.device is taken as given (e.g. the mesh's device for this rank under torchrun).
        if spec.type == "cpu":
            return torch.device("cpu")
        if spec.type == "cuda":
            return _cuda_device(spec.index, what)
        raise DeviceError(f"{what}: '{spec}' is not supported; use {CHOICES}")
    text = str(spec if spec is not None else "auto").strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text == "auto":
        return _cuda_device(None, what) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cuda":
        return _cuda_device(None, what)
    if text.startswith("cuda:"):
        try:
            index = int(text[5:])
        except ValueError:
            raise DeviceError(f"{what}: '{spec}' is not a device; use {CHOICES}") from None
        if _world_size() > 1:
            raise DeviceError(f"{what}: '{spec}' would put every torchrun rank on one GPU; each rank uses its "
                              "own (cuda:LOCAL_RANK) with --device cuda or auto")
        return _cuda_device(index, what)
    raise DeviceError(f"{what}: unknown device '{spec}'; use {CHOICES}")


def exact_float32() -> None:
    """Full float32 arithmetic on the GPU. Ampere and Hopper GPUs may round matmul and conv
    inputs to TF32 (10-bit mantissa; cuDNN does so for convolutions by default): bounds and the
    network function would then be off by ~1e-3 of the output, so that a bound could exclude
    what the float32 network (onnxruntime) computes. The box self-check caught it on an H100."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def use_device(device: torch.device) -> None:
    """Make `device` the current CUDA device of this process (NCCL and the allocator counters use
    the current device) and its float32 arithmetic exact (`exact_float32`); nothing to do for the
    CPU."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        exact_float32()


def cpu_model() -> str:
    """The host CPU's model name (for the device line of benchmark tables)."""
    import platform

    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
