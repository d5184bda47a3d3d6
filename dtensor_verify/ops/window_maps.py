"""Which exact linear maps act on patches: zero / constant padding and average pooling.

A `LinearMapOp` built from one of these modules carries a `WindowMap`: the map is, on each
channel alone, a convolution with one constant weight (`scale`) over a `kernel` window, read with
`stride` from the input padded by `padding` (top, left). Its backward step on patches is then the
same transposed convolution as a depthwise conv's (`LinearMapOp.backward_patches`). Anything else
(average pooling that does not count the padding, ceil mode, a divisor override, padding of the
batch or channel dims, 1-D / 3-D) has no window map and is converted to dense.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class WindowMap:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]           # (top, left): input row = out row * stride - padding + i
    scale: float


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _avg_pool(m: nn.AvgPool2d) -> WindowMap | None:
    padding = _pair(m.padding)
    if m.ceil_mode or m.divisor_override is not None or (any(padding) and not m.count_include_pad):
        return None
    kernel = _pair(m.kernel_size)
    stride = _pair(m.stride if m.stride is not None else m.kernel_size)
    return WindowMap(kernel, stride, padding, 1.0 / (kernel[0] * kernel[1]))


def _pad(pads) -> WindowMap | None:
    """ONNX pads of a 4-D tensor: [n, c, h, w begins, n, c, h, w ends]; only h / w may be padded."""
    pads = [int(p) for p in pads]
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)):
        return None
    return WindowMap((1, 1), (1, 1), (pads[2], pads[3]), 1.0)


def window_map_of(module) -> WindowMap | None:
    """The window map of `module` (an ONNX / torch padding or pooling module), or None."""
    if isinstance(module, nn.AvgPool2d):
        return _avg_pool(module)
    if isinstance(module, (nn.ZeroPad2d, nn.ConstantPad2d)):
        left, _, top, _ = module.padding
        return WindowMap((1, 1), (1, 1), (int(top), int(left)), 1.0)
    if type(module).__name__ == "OnnxPadStatic" and getattr(module, "mode", None) == "constant":
        return _pad(getattr(module, "pads", ()))
    return None


def probe_shift(fn, in_shape, out_shape, offset) -> WindowMap | None:
    """The window map of a padding given only as a function (ONNX Pad with its pads as an input):
    `fn(x) - fn(0)` of a probe with distinct entries must be the probe shifted by (top, left) on
    each channel, zero elsewhere; checked exactly, else None."""
    import torch

    if len(in_shape) != 3 or len(out_shape) != 3 or in_shape[0] != out_shape[0]:
        return None
    C, H, W = in_shape
    x = torch.arange(1, C * H * W + 1, dtype=torch.float64).reshape(1, C, H, W)
    try:
        with torch.no_grad():
            y = fn(x.to(offset.dtype if offset is not None else torch.float32)).double()
    except (RuntimeError, TypeError, ValueError):
        return None
    if offset is not None:
        y = y - offset.double()
    hits = (y[0, 0] == 1).nonzero()
    if len(hits) != 1:
        return None
    top, left = (int(v) for v in hits[0])
    expected = torch.zeros_like(y)
    if top + H > out_shape[1] or left + W > out_shape[2]:
        return None
    expected[0, :, top:top + H, left:left + W] = x[0]
    return WindowMap((1, 1), (1, 1), (top, left), 1.0) if torch.equal(y, expected) else None
