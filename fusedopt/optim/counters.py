"""An optimizer's step and skip counts: host integers, or device counters.

A capturable optimizer (:mod:`fusedopt.optim.device_step`) counts its applied and
skipped steps on the device, where the kernel decides: reading ``step_count`` or
``skipped_steps`` then copies them to the host (a sync), and setting them (a
checkpoint's load) writes them there.
"""

from __future__ import annotations

from fusedopt.optim.device_step import APPLIED, SKIPPED


class Counters:
    """``step_count`` (updates applied) and ``skipped_steps`` (non-finite steps skipped)."""

    _device_counts = None  # a capturable optimizer's float64 device array, by index

    def _read(self, index: int, host: int) -> int:
        counts = self._device_counts
        return host if counts is None else int(counts[index])

    def _write(self, index: int, value: int) -> None:
        if self._device_counts is not None:
            self._device_counts[index] = value

    @property
    def step_count(self) -> int:
        """The number of updates applied (a capturable optimizer reads its device count)."""
        return self._read(APPLIED, self._step_count)

    @step_count.setter
    def step_count(self, value: int) -> None:
        self._step_count = value
        self._write(APPLIED, value)

    @property
    def skipped_steps(self) -> int:
        """The number of steps skipped for a non-finite gradient."""
        return self._read(SKIPPED, self._skipped_steps)

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._skipped_steps = value
        self._write(SKIPPED, value)
