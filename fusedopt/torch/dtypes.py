"""torch dtypes as fusedopt's storage names."""

from __future__ import annotations

import torch

#: torch dtype -> fusedopt storage name
STORAGE = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16",
           torch.float16: "float16"}
STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LOW = ("bfloat16", "float16")
