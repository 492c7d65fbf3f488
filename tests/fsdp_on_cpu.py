"""`train.py` (or tests/dist_update.py) under FSDP on the CPU: `accelerate launch --config_file configs/fsdp.yaml
tests/fsdp_on_cpu.py SCRIPT ARGS...`.

torch's FSDP2 (fully_shard) runs on CPU tensors over gloo, but accelerate switches FSDP on only for GPU-like
devices. This turns it on after the Accelerator is made, with the plugin the launcher's config describes; every
other line that runs is the real script's. Not a test file itself: a launcher starts it.
"""
import runpy
import sys
from pathlib import Path

import accelerate
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]


class CPUFSDPAccelerator(accelerate.Accelerator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        PartialState().distributed_type = self.state.distributed_type = DistributedType.FSDP
        self.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables


accelerate.Accelerator = CPUFSDPAccelerator
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
