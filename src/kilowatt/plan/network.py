"""Collective communication times: gradient all-reduce, ZeRO gathers, tensor parallelism.

A ring all-reduce moves ``2·(n-1)/n`` of the buffer through every rank's slowest link.
Across nodes it runs hierarchically: inside each node over the accelerator interconnect,
between nodes over the node's network, where each node sends ``2·(N-1)/N`` of the buffer.
"""

from __future__ import annotations

__all__ = ["allreduce_time_s", "data_parallel_comm_s", "tensor_parallel_comm_s"]


def allreduce_time_s(
    buffer_bytes: float,
    ranks_per_node: int,
    nodes: int,
    intra_bytes_per_s: float,
    node_network_bytes_per_s: float,
) -> float:
    """Hierarchical ring all-reduce of ``buffer_bytes`` over ``ranks_per_node`` x ``nodes``.

    >>> allreduce_time_s(1e9, 8, 1, 100e9, 1e9)  # 2 * 7/8 GB over 100 GB/s
    0.0175
    """
    intra = 2.0 * buffer_bytes * (ranks_per_node - 1) / ranks_per_node / intra_bytes_per_s
    inter = 2.0 * buffer_bytes * (nodes - 1) / nodes / node_network_bytes_per_s
    return intra + inter


def data_parallel_comm_s(
    grad_bytes: float,
    zero_stage: int,
    ranks_per_node: int,
    nodes: int,
    intra_bytes_per_s: float,
    node_network_bytes_per_s: float,
) -> float:
    """Communication per optimizer step of one data-parallel group.

    Stages 0-2 move one all-reduce worth (reduce-scatter + all-gather); stage 3 also
    gathers the weights again for the backward pass: 1.5x (ZeRO paper, section 7).
    """
    if ranks_per_node * nodes <= 1:
        return 0.0
    factor = 1.5 if zero_stage >= 3 else 1.0
    return factor * allreduce_time_s(
        grad_bytes, ranks_per_node, nodes, intra_bytes_per_s, node_network_bytes_per_s
    )


def tensor_parallel_comm_s(
    activation_bytes_per_layer: float, layers: float, tp: int, intra_bytes_per_s: float
) -> float:
    """Tensor-parallel all-reduces of one micro-batch: 4 per layer (2 forward, 2 backward)
    of the layer's ``s·b·h`` activations (Megatron-LM)."""
    if tp <= 1:
        return 0.0
    per_allreduce = 2.0 * activation_bytes_per_layer * (tp - 1) / tp / intra_bytes_per_s
    return 4.0 * layers * per_allreduce
