"""The memory model: what a real training loop holds at its peak, as pure functions.

The loop is the library's own: build the model (its parameters and gradients
in a :class:`~fusedopt.ParamArena`), build the optimizer (its state, allocated
at the first step), then ``for X_t, Y_t in fo.minibatches(...)`` take a step,
epoch after epoch. Byte counts are Python integers: they never wrap around.

Besides what lives through the whole run (parameters, gradients, optimizer
state, the epoch's permutation, the model's workspace of activations and
deltas, the data set where it has to be), the loop peaks at one of two moments:

* **gathering a mini-batch**: the next ``X{t}, Y{t}`` are copied out while the
  loop still holds the previous ones (its loop variables), so two batches
  are alive;
* **inside a step**: one batch, plus the step's temporaries (the ReLU mask of
  backward propagation, the softmax's column reductions, a cast of ``X{t}`` when
  its dtype differs from the parameters').

The model of :class:`fusedopt.MLP` (its parameter shapes, workspace and
temporaries) is asked of the MLP itself; other models give their activation
bytes per sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fusedopt import config
from fusedopt.arena import ALIGN_BYTES, layout
from fusedopt.kernels import optimizer_names, optimizer_rule
from fusedopt.kernels.dtypes import ITEMSIZE, RECIPES
from fusedopt.train.mlp import MLP

#: No dimension (or layer size, or sample count) can be larger: no machine holds 2**62 bytes.
MAX_DIMENSION = 2**62
#: Bytes of the int64 indices of one epoch's shuffle, per sample.
PERMUTATION_BYTES_PER_SAMPLE = 8


def state_slots(optimizer: str) -> int:
    """State arrays per parameter of the optimizer called ``optimizer`` (from its rule)."""
    return len(optimizer_rule(optimizer).state)


def check_optimizer(f: str, optimizer) -> None:
    if optimizer not in optimizer_names():
        raise ValueError(f"{f}: optimizer={optimizer!r}; choose one of "
                         f"{sorted(optimizer_names())}")


def array_bytes(shape: Sequence[int], dtype) -> int:
    """Bytes of one dense array (Python integers: byte counts never wrap around)."""
    return math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize


def batch_bytes(n_x: int, n_y: int, batch_size: int, x_dtype=np.float32,
                y_dtype=np.float32) -> dict[str, int]:
    """Bytes of one mini-batch ``X{t}: (n_x, b)`` and ``Y{t}: (n_y, b)`` (either layout)."""
    return {"X{t}": array_bytes((n_x, batch_size), x_dtype),
            "Y{t}": array_bytes((n_y, batch_size), y_dtype)}


def mlp_shapes(layer_sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Parameter shapes of :class:`fusedopt.MLP` (asked of the MLP)."""
    return MLP.parameter_shapes(layer_sizes)


def arena_buffer_elements(shapes: Sequence[Sequence[int]], dtype) -> int:
    """Elements of a :class:`ParamArena` buffer (the arena's own layout, alignment included)."""
    _, totals = layout(shapes, [dtype] * len(shapes))
    return sum(totals.values())


def parameter_bytes(shapes, dtype=np.float32, optimizer: str = "adam",
                    gpu: bool = False, precision: str = "fp32", world_size: int = 1,
                    shard_state: bool = False) -> dict[str, int]:
    """Parameters, gradients and optimizer state of a model held in a ParamArena, each in
    the storage of the ``precision`` recipe (:data:`fusedopt.kernels.dtypes.RECIPES`;
    ``"fp32"`` keeps ``dtype``), and the float32 master copy where the recipe has one.

    Per rank of ``world_size``: with ``shard_state`` (ZeRO-1, :mod:`fusedopt.optim.parallel`)
    the state and master copy are one block of 1/W, plus the block of summed gradients
    the reduce-scatter fills (16-bit gradients are summed in a float32 copy)."""
    check_optimizer("parameter_bytes", optimizer)
    if precision not in RECIPES:
        raise ValueError(f"parameter_bytes: precision={precision!r}; choose one of "
                         f"{', '.join(RECIPES)}")
    param, state, master, _ = RECIPES[precision]
    if precision == "fp32":
        param = state = np.dtype(dtype).name
    # the arena's layout depends only on the item size (a float16 stand-in for bfloat16)
    n = arena_buffer_elements(shapes, {2: np.float16, 4: np.float32, 8: np.float64}[
        ITEMSIZE[param]])
    pad = 0 if gpu else ALIGN_BYTES  # on the CPU the arena over-allocates one pad per buffer
    buffer = n * ITEMSIZE[param] + pad
    slots = state_slots(optimizer)
    state_name = (f"optimizer state ({slots} slots)" if precision == "fp32"
                  else f"optimizer state ({slots} slots, {state})")
    # elements of state on the rank holding most (the last: its block and the remainder)
    held = n // world_size + n % world_size if shard_state else n
    if shard_state:
        state_name += f", 1/{world_size} per rank"
    out = {"parameters": buffer, "gradients": buffer,
           state_name: slots * held * ITEMSIZE[state]}
    if master:
        out["float32 master copy" + (f" (1/{world_size})" if shard_state else "")] = held * 4
    wide = ITEMSIZE[param] == 2
    if shard_state and (world_size > 1 or wide):  # (one process sums in place)
        out["summed gradient block (reduce-scatter)"] = held * (4 if wide else ITEMSIZE[param])
    if wide and (world_size > 1 or shard_state):
        out["float32 gradients (summed across ranks)"] = n * 4
    return out


def mlp_activation_bytes(layer_sizes: Sequence[int], batch_size: int, dtype=np.float32,
                         x_dtype=None, y_dtype=None) -> dict[str, int]:
    """The MLP's workspace and step temporaries at ``batch_size`` (asked of the MLP:
    :meth:`fusedopt.MLP.activation_bytes`)."""
    return MLP.activation_bytes(layer_sizes, batch_size, dtype, x_dtype=x_dtype,
                                y_dtype=y_dtype)


def step_peak_bytes(*, n_x: int, n_y: int, m: int, batch_size: int, shapes,
                    layer_sizes: Sequence[int] | None = None,
                    activation_bytes_per_sample: int | None = None, dtype=np.float32,
                    x_dtype=np.float32, y_dtype=np.float32, optimizer: str = "adam",
                    shuffle: bool = True, gpu: bool = False,
                    precision: str = "fp32", world_size: int = 1,
                    shard_state: bool = False) -> dict[str, int]:
    """Every item alive at the peak of the training loop, by name (bytes); they sum to it.

    The items that live through the run, one mini-batch, and then whichever of
    the two moments (see the module docstring) needs more: the previous
    mini-batch still held while the next is gathered, or the step's temporaries.
    With ``world_size`` W (data parallelism), on one rank: ``batch_size`` is the global
    batch, of which each rank takes ``ceil(b / W)`` samples.
    """
    out = {}
    out.update(parameter_bytes(shapes, dtype, optimizer, gpu, precision, world_size,
                               shard_state))
    batch_size = -(-batch_size // world_size)  # this rank's share of the global batch
    if precision != "fp32":  # the MLP computes on a float32 copy of its 16-bit arena
        working = parameter_bytes(shapes, dtype, optimizer, gpu)
        out["the MLP's float32 working copy (parameters, gradients)"] = (
            working["parameters"] + working["gradients"])
    if not gpu:  # the host side of any loop; on a GPU it is not in the device's memory
        out["Python and NumPy bookkeeping"] = (
            config.PLANNER_LOOP_OVERHEAD_BYTES
            + len(shapes) * (config.PLANNER_TENSOR_OVERHEAD_BYTES
                             + state_slots(optimizer) * config.PLANNER_STATE_OVERHEAD_BYTES)
            + (config.PLANNER_BATCH_OVERHEAD_BYTES if m >= 8 * batch_size else 0))
    if shuffle:
        out["permutation"] = PERMUTATION_BYTES_PER_SAMPLE * m
    if layer_sizes is not None:
        model = mlp_activation_bytes(layer_sizes, batch_size, dtype, x_dtype=x_dtype,
                                     y_dtype=y_dtype)
        temporaries = model.pop("step temporaries")
        out.update(model)
    else:
        out["activations (per sample x b)"] = int(activation_bytes_per_sample) * batch_size
        temporaries = 0
    batch = batch_bytes(n_x, n_y, batch_size, x_dtype, y_dtype)
    out.update(batch)
    # A full batch is gathered while the loop holds the one before: a full one too, unless
    # an epoch is one full batch and a remainder, which is then what is held.
    full, rest = divmod(m, batch_size) if batch_size < m else (1, 0)
    previous = batch_size if full >= 2 or rest == 0 else rest
    held = sum(batch_bytes(n_x, n_y, previous, x_dtype, y_dtype).values())
    if held >= temporaries:
        out["previous X{t}, Y{t} (held while the next are gathered)"] = held
    else:
        out["step temporaries"] = temporaries
    return out


def dataset_bytes(x_shape, x_dtype, y_shape, y_dtype) -> int:
    """Bytes of the whole training set ``X``, ``Y``."""
    return array_bytes(x_shape, x_dtype) + array_bytes(y_shape, y_dtype)
