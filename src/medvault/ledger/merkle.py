"""Merkle tree hashing and proofs of RFC 9162 (Certificate Transparency v2) §2.1 — pure functions.

SPEC: https://www.rfc-editor.org/rfc/rfc9162#section-2.1

* §2.1.1  MTH({}) = HASH(); MTH({d0}) = HASH(0x00 || d0);
          MTH(D[n]) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n])), k the largest power of two < n.
* §2.1.3  inclusion proofs (PATH) and their verification.
* §2.1.4  consistency proofs (PROOF / SUBPROOF) and their verification.

The proof *generators* are written as the RFC's recursion over index ranges: they return the
ranges ``(start, end)`` whose MTH form the proof, so a store holding complete-subtree hashes can
answer them with O(log n) reads (:mod:`medvault.ledger.store`). The *verifiers* follow the RFC's
bit-walking algorithms (§2.1.3.2, §2.1.4.2) and share no code with the generators.

A root hash does not commit to the tree size: a proof verifies against every size for which
the path has the same shape. That is why checkpoints sign the size and the root together.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medvault.errors import InvalidInput, ProofInvalid

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "LEAF_HASH_PREFIX",
    "NODE_HASH_PREFIX",
    "ConsistencyProof",
    "InclusionProof",
    "Range",
    "consistency_path",
    "consistency_proof",
    "inclusion_path",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_hash",
    "root",
    "root_from_leaf_hashes",
    "subtree_decomposition",
    "verify_consistency",
    "verify_inclusion",
]

LEAF_HASH_PREFIX = b"\x00"  # RFC 9162 §2.1.1: leaf hashes are HASH(0x00 || d)
NODE_HASH_PREFIX = b"\x01"  # RFC 9162 §2.1.1: interior nodes are HASH(0x01 || left || right)
HASH_SIZE = 32  # SHA-256, the hash algorithm of RFC 9162 §2.1 as used here
EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 9162 §2.1.1: MTH({}) = HASH()

Range = tuple[int, int]
"""A half-open range of leaf indices ``[start, end)``."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 §2.1.1 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(LEAF_HASH_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_HASH_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n > 1), the RFC's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH of a list of leaves given by their leaf hashes (iterative, O(n) hashes, O(log n) memory)."""
    if not hashes:
        return EMPTY_ROOT
    stack: list[bytes] = []
    for i, h in enumerate(hashes):
        stack.append(h)
        count = i + 1
        while count & 1 == 0:  # each trailing zero bit of the count completes one subtree
            right = stack.pop()
            stack[-1] = node_hash(stack[-1], right)
            count >>= 1
    return fold_peaks(stack)


def fold_peaks(peaks: Sequence[bytes]) -> bytes:
    """Combine the roots of the complete subtrees of a tree (largest first) into its MTH."""
    acc = peaks[-1]
    for h in reversed(peaks[:-1]):
        acc = node_hash(h, acc)
    return acc


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of the leaf data ``leaves`` (RFC 9162 §2.1.1)."""
    return root_from_leaf_hashes([leaf_hash(d) for d in leaves])


def subtree_decomposition(start: int, end: int) -> list[tuple[int, int]]:
    """The complete subtrees ``(level, index)`` whose roots, folded right to left, give MTH(D[start:end]).

    Valid for every range the RFC recursion produces (``start`` a multiple of the power of two
    that bounds ``end - start``); a complete subtree at ``level`` L and ``index`` i covers leaves
    ``[i * 2**L, (i + 1) * 2**L)``.
    """
    if not 0 <= start < end:
        raise InvalidInput(f"empty or negative leaf range [{start}, {end})")
    out: list[tuple[int, int]] = []
    pos, n = start, end - start
    for level in range(n.bit_length() - 1, -1, -1):
        if n >> level & 1:
            if pos % (1 << level):
                raise InvalidInput(f"leaf range [{start}, {end}) is not aligned to subtrees")
            out.append((level, pos >> level))
            pos += 1 << level
    return out


def range_hash(r: Range, subtree: Callable[[int, int], bytes]) -> bytes:
    """MTH(D[start:end]) from a function returning the root of complete subtree ``(level, index)``."""
    return fold_peaks([subtree(level, index) for level, index in subtree_decomposition(*r)])


# --- proof generation (RFC 9162 §2.1.3.1 and §2.1.4.1), as leaf ranges --------------------------


def inclusion_path(index: int, size: int) -> list[Range]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1 as the leaf ranges whose MTH form it, in proof order."""
    if not 0 <= index < size:
        raise InvalidInput(f"leaf index {index} is outside a tree of size {size}")
    top_down: list[Range] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:  # PATH(m, D[0:k]) : MTH(D[k:n])
            top_down.append((lo + k, hi))
            hi = lo + k
        else:  # PATH(m - k, D[k:n]) : MTH(D[0:k])
            top_down.append((lo, lo + k))
            lo, m = lo + k, m - k
    return top_down[::-1]


def consistency_path(first: int, second: int) -> list[Range]:
    """PROOF(m, D[n]) of RFC 9162 §2.1.4.1 as leaf ranges, in proof order (0 < m <= n; empty if m == n)."""
    if not 0 < first <= second:
        raise InvalidInput(f"no consistency proof from size {first} to size {second}")
    top_down: list[Range] = []
    lo, hi, m, complete = 0, second, first, True  # SUBPROOF(m, D[lo:hi], b)
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:  # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            top_down.append((lo + k, hi))
            hi = lo + k
        else:  # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            top_down.append((lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
        top_down.append((lo, hi))
    return top_down[::-1]


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The inclusion proof of leaf ``index`` in the tree of ``leaf_hashes`` (in-memory helper)."""
    return [root_from_leaf_hashes(leaf_hashes[a:b]) for a, b in inclusion_path(index, len(leaf_hashes))]


def consistency_proof(first: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The consistency proof from size ``first`` to the tree of ``leaf_hashes`` (in-memory helper)."""
    return [root_from_leaf_hashes(leaf_hashes[a:b]) for a, b in consistency_path(first, len(leaf_hashes))]


# --- proof verification (RFC 9162 §2.1.3.2 and §2.1.4.2) ----------------------------------------


def _check_hashes(*hashes: bytes) -> None:
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise ProofInvalid(f"a hash of {len(h)} bytes where {HASH_SIZE} were expected")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes) -> None:
    """Check that leaf hash ``leaf`` is at ``index`` in the tree of ``size`` with ``root_hash``.

    RFC 9162 §2.1.3.2, step by step. Raises :class:`ProofInvalid` on any failure.
    """
    _check_hashes(leaf, root_hash, *proof)
    if not 0 <= index < size:  # step 1
        raise ProofInvalid(f"leaf index {index} is not inside tree size {size}")
    fn, sn = index, size - 1  # step 2
    r = leaf  # step 3
    for p in proof:  # step 4
        if sn == 0:  # 4a
            raise ProofInvalid("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:  # 4b
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:  # 4b.ii
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # 4c
        sn >>= 1
    if sn != 0:  # step 5
        raise ProofInvalid("inclusion proof is shorter than the tree is deep")
    if r != root_hash:
        raise ProofInvalid(f"inclusion proof for leaf {index} does not lead to the root of size {size}")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``second`` leaves with ``second_root`` extends that of ``first``.

    RFC 9162 §2.1.4.2 for 0 < first < second. Edge cases the RFC leaves to the caller: first ==
    second needs an empty proof and equal roots; first == 0 needs an empty proof (every tree
    extends the empty tree). Raises :class:`ProofInvalid` on any failure.
    """
    _check_hashes(first_root, second_root, *proof)
    if not 0 <= first <= second:
        raise ProofInvalid(f"no consistency from size {first} to size {second}")
    if first == 0 or first == second:
        if proof:
            raise ProofInvalid("a consistency proof between these sizes must be empty")
        if first == second and first_root != second_root:
            raise ProofInvalid(f"two different roots for the same tree size {first}")
        return
    path = list(proof)
    if not path:  # step 1
        raise ProofInvalid("empty consistency proof")
    if first & (first - 1) == 0:  # step 2: first is an exact power of two
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            raise ProofInvalid("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # step 7
        raise ProofInvalid("consistency proof is shorter than the tree is deep")
    if fr != first_root:
        raise ProofInvalid(f"consistency proof does not lead to the root of size {first}")
    if sr != second_root:
        raise ProofInvalid(f"consistency proof does not lead to the root of size {second}")


# --- the JSON shapes served at /ledger/proof/* ---------------------------------------------------


def _b64_hashes(raw: Any, what: str) -> tuple[bytes, ...]:
    if not isinstance(raw, list):
        raise InvalidInput(f"{what}: 'hashes' must be a list of base64 strings")
    out = []
    for item in raw:
        if not isinstance(item, str):
            raise InvalidInput(f"{what}: 'hashes' must be a list of base64 strings")
        try:
            h = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"{what}: a hash is not valid base64") from None
        if len(h) != HASH_SIZE:
            raise InvalidInput(f"{what}: a hash of {len(h)} bytes where {HASH_SIZE} were expected")
        out.append(h)
    return tuple(out)


def _int_field(raw: Mapping[str, Any], name: str, what: str) -> int:
    value = raw.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"{what}: '{name}' must be a non-negative integer")
    return value


@dataclass(frozen=True, kw_only=True)
class InclusionProof:
    """``{"index": I, "tree_size": N, "hashes": [base64, …]}`` (RFC 9162 §2.1.3)."""

    index: int
    tree_size: int
    hashes: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "tree_size": self.tree_size,
            "hashes": [base64.b64encode(h).decode("ascii") for h in self.hashes],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> InclusionProof:
        what = "inclusion proof"
        return cls(
            index=_int_field(raw, "index", what),
            tree_size=_int_field(raw, "tree_size", what),
            hashes=_b64_hashes(raw.get("hashes"), what),
        )

    def verify(self, leaf: bytes, root_hash: bytes) -> None:
        """Check this proof for leaf hash ``leaf`` against the root of ``tree_size``."""
        verify_inclusion(leaf, self.index, self.tree_size, self.hashes, root_hash)


@dataclass(frozen=True, kw_only=True)
class ConsistencyProof:
    """``{"first": M, "second": N, "hashes": [base64, …]}`` (RFC 9162 §2.1.4)."""

    first: int
    second: int
    hashes: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "second": self.second,
            "hashes": [base64.b64encode(h).decode("ascii") for h in self.hashes],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ConsistencyProof:
        what = "consistency proof"
        return cls(
            first=_int_field(raw, "first", what),
            second=_int_field(raw, "second", what),
            hashes=_b64_hashes(raw.get("hashes"), what),
        )

    def verify(self, first_root: bytes, second_root: bytes) -> None:
        verify_consistency(self.first, self.second, first_root, second_root, self.hashes)
