"""SAM2's memory bank for one tracked expression, in a fixed number of preallocated slots.

GLUS keeps every frame's memory, but frame t only ever reads frame t-1 and the last six
multiples of mem_stride (runtime.rules.memory_frame_indices); after storing frame t, every
key that no later frame can read is dropped, so `num_maskmem` slots hold the bank exactly.
"""

from __future__ import annotations

import numpy as np

from . import rules
from .errors import InvariantError


class MemoryBank:
    def __init__(
        self,
        shape: tuple[int, ...],
        num_slots: int = rules.NUM_MASKMEM,
        mem_stride: int = rules.MEM_STRIDE,
        dtype=np.float32,
    ):
        self.slots = np.zeros((num_slots, *shape), dtype)
        self.keys = np.full(num_slots, -1, np.int64)  # frame position held by each slot, -1 = free
        self.mem_stride = mem_stride
        self.num_maskmem = num_slots

    def clear(self) -> None:
        self.keys[:] = -1

    def __len__(self) -> int:
        return int((self.keys >= 0).sum())

    @property
    def nbytes(self) -> int:
        return self.slots.nbytes + self.keys.nbytes

    def read(self, t: int) -> tuple[list[int], np.ndarray | None]:
        """The memories frame t reads, in GLUS's order, as [M, ...] (None if there are none)."""
        held = {int(k): s for s, k in enumerate(self.keys) if k >= 0}
        wanted = [k for k in rules.memory_frame_indices(t, self.mem_stride, self.num_maskmem) if k in held]
        if not wanted:
            return [], None
        return wanted, self.slots[[held[k] for k in wanted]]

    def store(self, t: int, memory: np.ndarray) -> None:
        """Store frame t's memory, then free every slot frame t+1 and later can no longer read."""
        keep = set(rules.reachable_memory_frames(t + 1, self.mem_stride, self.num_maskmem))
        for s, k in enumerate(self.keys):
            if k >= 0 and int(k) not in keep:
                self.keys[s] = -1
        free = np.flatnonzero(self.keys < 0)
        if not len(free):  # cannot happen: at most num_maskmem keys are ever reachable
            raise InvariantError(f"memory bank full at frame {t}: keys {self.keys.tolist()}")
        s = int(free[0])
        self.slots[s] = memory
        self.keys[s] = t
        # t itself must stay readable by t+1: it is in `keep` by construction.
