"""Linear / Gemm (`nn.Linear`): z = x W^T + b, W of shape [n_out, n_in]."""
from __future__ import annotations

import torch

from .base import BackwardResult, BoundOp, Capabilities, per_row_sum


class LinearOp(BoundOp):
    kind = "linear"
    caps = Capabilities(has_weights=True, neuron_rows=True, sums_over_weight_rows=True)

    def _params(self, params):
        params = self.module_params() if params is None else params
        return params["weight"], params.get("bias")

    def forward(self, x, params=None):
        w, b = self._params(params)
        return torch.nn.functional.linear(x, w, b)

    def ibp(self, interval, params=None):
        lo, hi = interval
        w, b = self._params(params)
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        center = torch.nn.functional.linear(mid, w, b)
        deviation = torch.nn.functional.linear(rad, w.abs())
        return center - deviation, center + deviation

    def backward(self, lA, uA, input_bounds, alpha=None, params=None):
        w, b = self._params(params)

        def step(A):
            return None if A is None else A.matmul(w)        # [B,K,...,out] @ [out,in]

        def bias(A):
            return 0.0 if (A is None or b is None) else per_row_sum(A.matmul(b).unsqueeze(-1))

        return BackwardResult([(step(lA), step(uA))], bias(lA), bias(uA))

    def backward_rows(self, rows, batch, params=None):
        # e_r^T W is row r of W: the one-hot matmul of the generic rule is skipped.
        if len(self.out_shape) != 1:
            return None       # a Linear over tokens [T, n]: flat row r is not row r of W
        w, b = self._params(params)
        A = w[rows].unsqueeze(0).expand(batch, -1, -1)
        bias = 0.0 if b is None else b[rows].unsqueeze(0).expand(batch, -1)
        return BackwardResult([(A, A)], bias, bias)
