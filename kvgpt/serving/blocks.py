"""Block bookkeeping for a paged KV cache: a free list, reference counts, and hash-chained prefix blocks.

A block is block_size consecutive KV slots of one sequence. The allocator hands out block ids; it never
touches tensors (kvgpt/serving/paged.py owns the pool). A FULL block can be registered under the hash of
(previous block's hash, its token ids), so a later prompt that starts with the same tokens reuses it.
Freed registered blocks stay cached until the free list runs dry and they are evicted, least recently
used first. The idea follows vLLM's automatic prefix caching and nano-vllm's block_manager.py.
Introduced in notebooks/10_paged_attention.ipynb.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from ..validation import check_allocation, check_int, check_positive_int, fail_type


BOOKKEEPING_BYTES = 64  # per block, about: a refcount slot, a free-list entry and the int object they hold


class NoFreeBlocksError(RuntimeError):
    """The pool has no free or evictable block left (the scheduler preempts, or the caller gives up).

    Introduced in notebooks/10_paged_attention.ipynb.
    """


def block_hash(parent: int | None, tokens) -> int:
    """The hash of a full block: hash((parent block's hash, its token ids)); the first block's parent is None.

    Chaining makes a block's hash stand for its whole prefix, so equal hashes mean equal prefixes (a
    collision is caught by the content check in BlockAllocator.lookup). Python hashes ints and tuples of
    ints deterministically (None is hashed by address before Python 3.12: the first parent is hashed as 0),
    so the hashes are the same in every process.
    Introduced in notebooks/10_paged_attention.ipynb.
    """
    return hash((0 if parent is None else parent, tuple(tokens)))


def prefix_hashes(tokens, block_size: int) -> list[int]:
    """The chained hash of every FULL block of `tokens` (a partial last block has none).

    Introduced in notebooks/10_paged_attention.ipynb.
    """
    hashes, parent = [], None
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = block_hash(parent, tokens[start : start + block_size])
        hashes.append(parent)
    return hashes


class BlockAllocator:
    """A pool of num_blocks block ids: free list, reference counts, and a table hash -> cached full block.

    A block is in exactly one state: in use (refcount >= 1), cached (refcount 0, registered, evictable),
    or free (refcount 0, unregistered). allocate() takes a free block first, else evicts the least
    recently freed cached one. Freeing an unused block or forking a free one raises.
    Each reference may carry its holder (`owner`, e.g. a sequence id; None when untagged): holders[block] lists
    them, so a sequence can check it still holds every block of its table (a block freed behind its back and
    handed to another sequence is caught, not read), and freeing for an owner that holds no reference raises.
    vLLM's names: block_size, num_gpu_blocks (the pool), enable_prefix_caching (the hash table).
    Introduced in notebooks/10_paged_attention.ipynb.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = check_positive_int("num_blocks", num_blocks)
        self.block_size = check_positive_int("block_size", block_size)
        check_allocation(f"BlockAllocator(num_blocks={num_blocks})", num_blocks * BOOKKEEPING_BYTES, None)
        self.ref_counts = [0] * self.num_blocks
        self.holders: dict[int, list] = {}  # block in use -> the owner of each reference (None: untagged)
        self.revoked: set = set()  # owners that lost a reference to an untagged free (PagedKVCache checks only these)
        self.free_ids: deque[int] = deque(range(self.num_blocks))  # refcount 0, no hash
        self.cached: OrderedDict[int, None] = OrderedDict()  # refcount 0 with a hash, oldest first
        self.hash_of: dict[int, int] = {}  # block -> its hash, for registered (full) blocks
        self.content: dict[int, tuple] = {}  # block -> (parent hash, token ids): guards against hash collisions
        self.table: dict[int, int] = {}  # hash -> block

    @property
    def num_free(self) -> int:
        """Blocks allocate() can still hand out: free ones plus evictable cached ones."""
        return len(self.free_ids) + len(self.cached)

    @property
    def num_used(self) -> int:
        """Blocks with refcount >= 1."""
        return self.num_blocks - self.num_free

    def allocate(self, owner=None) -> int:
        """A block with refcount 1 (held by `owner`) and no hash. Raises NoFreeBlocksError when none is free or
        evictable."""
        owner = _owner(owner)
        if self.free_ids:
            block = self.free_ids.popleft()
        elif self.cached:
            block, _ = self.cached.popitem(last=False)  # least recently used first
            del self.table[self.hash_of.pop(block)], self.content[block]  # its contents are about to change
        else:
            raise NoFreeBlocksError(f"all {self.num_blocks} KV blocks are in use (block_size={self.block_size}); "
                                    "free a sequence, preempt one, or build a larger pool (num_blocks)")
        self.ref_counts[block], self.holders[block] = 1, [owner]
        return block

    def _check_id(self, block) -> int:
        return check_int("block", block, 0, self.num_blocks - 1)

    def holds(self, owner, block: int) -> bool:
        """True if `owner` holds a reference to `block`."""
        return owner in self.holders.get(block, ())

    def free(self, block: int, owner=None) -> None:
        """Drop `owner`'s reference; at zero the block becomes cached (if registered) or free. Double free raises.

        An untagged free (owner None) of a block only tagged owners hold drops the latest one's reference: that
        holder's next use of the block raises (PagedKVCache checks its tables), it never reads another's slots.
        """
        block, owner = self._check_id(block), _owner(owner)
        if self.ref_counts[block] == 0:
            raise ValueError(f"block {block} is not in use (refcount 0): double free, or freeing a block never allocated")
        holders = self.holders[block]
        if owner not in holders and owner is not None:
            raise ValueError(f"owner={owner!r} holds no reference to block {block} (held by {holders}): "
                             "freeing it would take the block from under its holders")
        taken = owner if owner in holders else holders[-1]
        holders.remove(taken)
        if taken is not None and taken != owner:  # a reference taken from under its holder: its next use must raise
            self.revoked.add(taken)
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            del self.holders[block]
            if block in self.hash_of:
                self.cached[block] = None  # most recently used end: evicted last
            else:
                self.free_ids.append(block)

    def fork(self, block: int, owner=None) -> int:
        """One more reference (held by `owner`) to a block in use or cached (a cached one is revived).
        A free block raises."""
        block, owner = self._check_id(block), _owner(owner)
        if self.ref_counts[block] == 0:
            if block not in self.cached:
                raise ValueError(f"block {block} is free: its slots hold nothing to share")
            del self.cached[block]
        self.ref_counts[block] += 1
        self.holders.setdefault(block, []).append(owner)
        return block

    def register(self, block: int, hash_value: int, parent: int | None, tokens) -> None:
        """Record that full block `block` (in use) holds `tokens` after the prefix hashed `parent`."""
        block = self._check_id(block)
        check_int("hash_value", hash_value)
        if parent is not None:
            check_int("parent", parent)
        if self.ref_counts[block] == 0:
            raise ValueError(f"block {block} is not in use: only a block just written can be registered")
        if not isinstance(tokens, (list, tuple)):
            fail_type("tokens", tokens, f"a list of the block's {self.block_size} token ids")
        if len(tokens) != self.block_size:
            raise ValueError(f"only full blocks are registered: got {len(tokens)} tokens, block_size={self.block_size}")
        if block in self.hash_of or hash_value in self.table:
            return  # already registered, or an equal block is (the first one stays the cached copy)
        self.hash_of[block], self.table[hash_value] = hash_value, block
        self.content[block] = (parent, tuple(tokens))

    def lookup(self, hash_value: int, parent: int | None, tokens) -> int | None:
        """The registered block holding `tokens` after prefix `parent`, or None. Changes no reference count."""
        check_int("hash_value", hash_value)
        if not isinstance(tokens, (list, tuple)):
            fail_type("tokens", tokens, "a list of token ids")
        block = self.table.get(hash_value)
        if block is None or self.content[block] != (parent, tuple(tokens)):
            return None
        return block

    def is_shared_or_full(self, block: int) -> bool:
        """True if writing into `block` could change what another sequence or a future prompt reads."""
        block = self._check_id(block)
        return self.ref_counts[block] > 1 or block in self.hash_of

    def __repr__(self) -> str:
        return (f"BlockAllocator(num_blocks={self.num_blocks}, block_size={self.block_size}, used={self.num_used}, "
                f"cached={len(self.cached)}, free={len(self.free_ids)})")


def _owner(owner):
    """A reference's holder: None (untagged) or an int (a sequence id)."""
    return None if owner is None else check_int("owner", owner)
