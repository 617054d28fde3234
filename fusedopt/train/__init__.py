"""The lecture's application, built on the library: an MLP, data, mini-batches, the batch-size
planner and profiler, and the demo.

=============  =================================================================
``mlp``        :class:`MLP`: the custom training loop users start from; it owns
               its parameter shapes and activation bytes
``datasets``   the UCI digits shipped with scikit-learn
``batches``    :func:`minibatches`: the lecture's shuffle-and-partition
``planner``    the memory model and :func:`plan_batch_size`
``measured_plan``  :func:`measure_batch_size`: a plan for any trainer's step,
               measured under the device's own memory accounting
``profile``    :func:`profile_batch_sizes`: throughput and time-to-cost per size
``profile_report``  its results: table, JSON and plots
``demo``       ``fusedopt demo``
=============  =================================================================
"""

from fusedopt.train.batches import minibatches
from fusedopt.train.measured_plan import MeasuredPlan, measure_batch_size
from fusedopt.train.mlp import MLP, one_hot
from fusedopt.train.planner import BatchPlan, plan_batch_size
from fusedopt.train.profile import profile_batch_sizes

__all__ = ["MLP", "BatchPlan", "MeasuredPlan", "measure_batch_size", "minibatches", "one_hot",
           "plan_batch_size", "profile_batch_sizes"]
