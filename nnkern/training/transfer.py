"""Host-to-device copies of training batches.

On CUDA each batch is staged in a reusable pinned (page-locked) host buffer, which the GPU's
copy engine reads directly, and copied into a reusable device buffer: one transfer per array per
step and no allocation. Reusing the device buffer is safe inside fit/evaluate because a batch is
only read by the forward and backward of its own step, which finish (on the one default stream)
before the next batch is copied in.
"""

import numpy as np

from nnkern.backend import CPU


class BatchTransfer:
    """``transfer(host_batch) -> batch on the device`` (the array itself on the CPU)."""

    def __init__(self, device):
        self.device = device
        self._buffers = {}  # (shape, dtype) -> (pinned host buffer, device buffer)

    def __call__(self, host):
        if self.device == CPU:
            return host
        key = (host.shape, host.dtype.str)
        buffers = self._buffers.get(key)
        if buffers is None:
            from numba import cuda
            buffers = (cuda.pinned_array(host.shape, host.dtype),
                       cuda.device_array(host.shape, host.dtype))
            self._buffers[key] = buffers
        pinned, device_buffer = buffers
        np.copyto(pinned, host)
        device_buffer.copy_to_device(pinned)
        return device_buffer
