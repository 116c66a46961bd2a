"""Dense -> BatchNorm1D (-> ReLU), fused: the step ``Sequential`` runs for that layer sequence
on the CPU (an MLP's hidden layer with batch norm). Not a public op: the math is the dense and
batch-norm ops' (``nnkern.ops.dense``, ``nnkern.ops.batch_norm``), and their NumPy references,
composed, are its oracle.

Shapes: x (N, I), w (O, I), b (O,) -> z = x @ w.T + b (N, O), the batch norm's input, and
y = batch_norm(z) (N, O), ReLU'd when asked. Batch norm 1-D keeps every feature to itself, so
the layer cuts cleanly along the output features: each block of them runs its GEMM, its bias,
its statistics and its output on one thread (``cpu.py``).
"""
