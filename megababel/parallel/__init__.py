"""Everything parallel in one place: collectives and their device, the tensor-parallel layout and its layers, and a
launcher of local ranks (for tests and benchmarks).

This file is the package's interface; nothing outside it imports megababel.parallel.tensor_parallel. The model asks
`TensorParallel` for its layers (`make`), DeepSpeed gets it as `mpu`, and the state paths
(engine, growth, checkpoints) move unsharded tensors in and out of shards with `shard_of`, `block_shard` and
`merge_layer_state`, and check DeepSpeed's flags with `unflagged_shards`.
"""
from megababel.parallel.distributed import all_gather, all_gather_flat, all_reduce, broadcast, comm_device, free_port
from megababel.parallel.tensor_parallel import (TensorParallel, block_shard, check_tensor_parallel, merge_layer_state,
                                                shard_of, unflagged_shards)

__all__ = ["TensorParallel", "all_gather", "all_gather_flat", "all_reduce", "block_shard", "broadcast",
           "check_tensor_parallel", "comm_device", "free_port", "merge_layer_state", "shard_of", "unflagged_shards"]
