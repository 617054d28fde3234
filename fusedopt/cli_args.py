"""Argument types of the ``fusedopt`` command: sizes, memory amounts and counts, each a clear
one-line error (argparse's) when wrong."""

from __future__ import annotations

import argparse


def _int_list(text: str) -> list[int]:
    try:
        numbers = [float(x) for x in text.split(",") if x]  # 1e6 is a size too
        if not all(x.is_integer() for x in numbers):
            raise ValueError
        values = [int(x) for x in numbers]
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or min(values) < 1 or max(values) > 2**62:
        raise argparse.ArgumentTypeError("sizes must be integers from 1 to 2**62, e.g. "
                                         "4096,1048576")
    return values


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
          "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
          "tib": 2**40}


def memory_size(text: str) -> int:
    """Bytes from '8GiB', '512MiB', '2GB', '1e9'."""
    import re

    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size (e.g. 8GiB, 512MiB)")
    try:
        value = int(float(match.group(1)) * _UNITS[unit])
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size") from None
    if value < 1:
        raise argparse.ArgumentTypeError("the memory size must be at least one byte")
    return value


def _layers(text: str) -> list[int]:
    values = _int_list(text)
    if len(values) < 2:
        raise argparse.ArgumentTypeError("--layers needs at least input and output sizes, "
                                         "e.g. 784,256,10")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive finite number")
    return value


def _non_negative_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value


def _batch_size(text: str):
    return "plan" if text == "plan" else _positive_int(text)
