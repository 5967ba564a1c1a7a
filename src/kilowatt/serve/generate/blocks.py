"""The KV-cache block manager: a fixed pool of blocks of ``block_size`` token slots.

Each sequence owns a block table (its blocks in order); token ``p`` of a sequence lives in
slot ``table[p // block_size] * block_size + p % block_size``. Blocks are taken as a
sequence grows and all given back the moment it finishes, is aborted or is preempted, so
sequences of any length share one pool and waste at most one partial block each.
"""

from __future__ import annotations

from kilowatt.serve.errors import InvalidInput

__all__ = ["BlockManager"]


class BlockManager:
    """Hands out KV blocks from a fixed pool.

    >>> blocks = BlockManager(num_blocks=4, block_size=16)
    >>> blocks.grow("a", 20)
    [0, 1]
    >>> blocks.free_blocks, blocks.slot("a", 17)
    (2, 17)
    >>> blocks.release("a"); blocks.free_blocks
    4

    Args:
        num_blocks: blocks in the pool (the memory budget).
        block_size: token slots per block.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise InvalidInput(
                f"KV cache needs at least one block of one slot, got {num_blocks} blocks of "
                f"{block_size}; raise kv_blocks or block_size"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Lowest ids first, so a lone sequence's slots are contiguous and easy to read.
        self._free = list(range(num_blocks - 1, -1, -1))
        self._tables: dict[str, list[int]] = {}

    @property
    def free_blocks(self) -> int:
        """Blocks no sequence holds."""
        return len(self._free)

    @property
    def used_blocks(self) -> int:
        """Blocks held by sequences."""
        return self.num_blocks - len(self._free)

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold ``tokens`` token slots."""
        return -(-tokens // self.block_size)

    def can_grow(self, seq_id: str, tokens: int) -> bool:
        """Whether ``seq_id`` can hold ``tokens`` slots with the blocks free now."""
        held = len(self._tables.get(seq_id, ()))
        return self.blocks_for(tokens) - held <= len(self._free)

    def grow(self, seq_id: str, tokens: int) -> list[int]:
        """Give ``seq_id`` enough blocks for ``tokens`` slots; returns its block table.

        The caller checks ``can_grow`` first: running out here is a scheduling bug.
        """
        table = self._tables.setdefault(seq_id, [])
        missing = self.blocks_for(tokens) - len(table)
        assert missing <= len(self._free), "grow() without can_grow()"
        for _ in range(missing):
            table.append(self._free.pop())
        return table

    def table(self, seq_id: str) -> list[int]:
        """The block table of ``seq_id`` (empty when it holds none)."""
        return self._tables.get(seq_id, [])

    def slot(self, seq_id: str, position: int) -> int:
        """The cache slot of token ``position`` of ``seq_id``."""
        block = self._tables[seq_id][position // self.block_size]
        return block * self.block_size + position % self.block_size

    def release(self, seq_id: str) -> None:
        """Return every block of ``seq_id`` to the pool (no-op when it holds none)."""
        self._free.extend(reversed(self._tables.pop(seq_id, [])))
