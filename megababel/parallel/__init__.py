"""Everything parallel in one place: distributed start-up, collectives' device, tensor-parallel layout and layers.

Nothing outside this package reaches into tensor-parallel internals: the model asks `TensorParallel` for its layers
(`make`) and its loss (`loss_fn`), DeepSpeed gets it as `mpu`.
"""
from megababel.parallel.distributed import all_gather, all_reduce, broadcast, comm_device, free_port, init_distributed
from megababel.parallel.tensor_parallel import TensorParallel, check_tensor_parallel

__all__ = ["TensorParallel", "all_gather", "all_reduce", "broadcast", "check_tensor_parallel", "comm_device",
           "free_port", "init_distributed"]
