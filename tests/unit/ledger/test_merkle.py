"""RFC 9162 §2.1 hashing and proofs: known vectors, a naive recursive MTH, exhaustive and Hypothesis
checks."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medvault.errors import InvalidInput, ProofInvalid
from medvault.ledger import merkle
from medvault.ledger.merkle import ConsistencyProof, InclusionProof

# The RFC 6962 reference test data (also used by transparency-dev/merkle and Certificate Transparency).
LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    bytes(range(0x60, 0x70)),
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def naive_mth(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.1, transcribed literally."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(leaves[:k]) + naive_mth(leaves[k:])).digest()


def data(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


def hashes(n: int) -> list[bytes]:
    return [merkle.leaf_hash(d) for d in data(n)]


def test_constants_are_the_rfcs() -> None:
    assert merkle.LEAF_HASH_PREFIX == b"\x00"
    assert merkle.NODE_HASH_PREFIX == b"\x01"
    assert merkle.EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("n", range(1, 9))
def test_reference_roots(n: int) -> None:
    assert merkle.root(LEAVES[:n]).hex() == ROOTS[n - 1]
    assert naive_mth(LEAVES[:n]).hex() == ROOTS[n - 1]


def test_reference_proofs() -> None:
    leaf_hashes = [merkle.leaf_hash(d) for d in LEAVES]
    assert [h.hex()[:8] for h in merkle.inclusion_proof(0, leaf_hashes)] == [
        "96a296d2",
        "5f083f0a",
        "6b47aaf2",
    ]
    assert [h.hex()[:8] for h in merkle.consistency_proof(6, leaf_hashes)] == [
        "0ebc5d34",
        "ca854ea1",
        "d37ee418",
    ]
    assert [h.hex()[:8] for h in merkle.consistency_proof(2, leaf_hashes[:5])] == ["5f083f0a", "bc1a0643"]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 8, 13, 64, 100, 257])
def test_root_matches_naive(n: int) -> None:
    assert merkle.root(data(n)) == naive_mth(data(n))


def test_every_size_and_index_up_to_64() -> None:
    for n in range(1, 65):
        leaf_hashes = hashes(n)
        root = naive_mth(data(n))
        for i in range(n):
            merkle.verify_inclusion(leaf_hashes[i], i, n, merkle.inclusion_proof(i, leaf_hashes), root)
        for m in range(1, n + 1):
            proof = merkle.consistency_proof(m, leaf_hashes)
            merkle.verify_consistency(m, n, naive_mth(data(m)), root, proof)


def test_proof_ranges_are_subtree_hashes() -> None:
    leaf_hashes = hashes(300)
    for a, b in merkle.inclusion_path(137, 300) + merkle.consistency_path(77, 300):
        assert merkle.root_from_leaf_hashes(leaf_hashes[a:b]) == naive_mth(data(300)[a:b])


sizes = st.integers(min_value=1, max_value=300)


def inclusion_shape(i: int, n: int) -> tuple[bool, ...]:
    """For each proof hash: is it a left sibling? (All an RFC 9162 verifier looks at besides hashes.)"""
    return tuple(b <= i for _, b in merkle.inclusion_path(i, n))


def consistency_shape(m: int, n: int) -> tuple[bool, ...]:
    return tuple(b <= m for _, b in merkle.consistency_path(m, n))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_inclusion_proofs_verify_and_fail_when_altered(draw: st.DataObject) -> None:
    n = draw.draw(sizes)
    i = draw.draw(st.integers(0, n - 1))
    leaf_hashes = hashes(n)
    root = merkle.root_from_leaf_hashes(leaf_hashes)
    proof = merkle.inclusion_proof(i, leaf_hashes)
    merkle.verify_inclusion(leaf_hashes[i], i, n, proof, root)
    # any flipped bit in any proof hash
    if proof:
        j = draw.draw(st.integers(0, len(proof) - 1))
        bit = draw.draw(st.integers(0, 255))
        bad = list(proof)
        bad[j] = bytes(b ^ (1 << (bit % 8)) if k == bit // 8 else b for k, b in enumerate(bad[j]))
        with pytest.raises(ProofInvalid):
            merkle.verify_inclusion(leaf_hashes[i], i, n, bad, root)
        with pytest.raises(ProofInvalid):  # truncated
            merkle.verify_inclusion(leaf_hashes[i], i, n, proof[:-1], root)
    with pytest.raises(ProofInvalid):  # extended
        merkle.verify_inclusion(leaf_hashes[i], i, n, [*proof, root], root)
    with pytest.raises(ProofInvalid):  # wrong leaf
        merkle.verify_inclusion(merkle.leaf_hash(b"other"), i, n, proof, root)
    other = draw.draw(st.integers(0, n))
    if other != i:  # wrong index (or one outside the tree)
        with pytest.raises(ProofInvalid):
            merkle.verify_inclusion(leaf_hashes[i], other, n, proof, root)
    other_n = draw.draw(st.integers(i + 1, 310))
    # A root hash does not commit to the size (that is why checkpoints sign both): a proof
    # still verifies against another size exactly when the path has the same shape there.
    if inclusion_shape(i, other_n) != inclusion_shape(i, n):
        with pytest.raises(ProofInvalid):
            merkle.verify_inclusion(leaf_hashes[i], i, other_n, proof, root)
    else:
        merkle.verify_inclusion(leaf_hashes[i], i, other_n, proof, root)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_consistency_proofs_verify_and_fail_when_altered(draw: st.DataObject) -> None:
    n = draw.draw(sizes)
    m = draw.draw(st.integers(1, n))
    leaf_hashes = hashes(n)
    r_m, r_n = merkle.root_from_leaf_hashes(leaf_hashes[:m]), merkle.root_from_leaf_hashes(leaf_hashes)
    proof = merkle.consistency_proof(m, leaf_hashes)
    merkle.verify_consistency(m, n, r_m, r_n, proof)
    if m == n:
        assert proof == []
        return
    j = draw.draw(st.integers(0, len(proof) - 1))
    bad = list(proof)
    bad[j] = hashlib.sha256(bad[j]).digest()
    with pytest.raises(ProofInvalid):
        merkle.verify_consistency(m, n, r_m, r_n, bad)
    with pytest.raises(ProofInvalid):
        merkle.verify_consistency(m, n, r_m, r_n, proof[:-1])
    with pytest.raises(ProofInvalid):
        merkle.verify_consistency(m, n, r_m, r_n, [*proof, r_n])
    with pytest.raises(ProofInvalid):  # a forked second tree
        merkle.verify_consistency(m, n, r_m, hashlib.sha256(r_n).digest(), proof)
    with pytest.raises(ProofInvalid):  # a different first tree
        merkle.verify_consistency(m, n, hashlib.sha256(r_m).digest(), r_n, proof)
    other_m = draw.draw(st.integers(1, n))
    if other_m != m and merkle.root_from_leaf_hashes(leaf_hashes[:other_m]) != r_m:
        with pytest.raises(ProofInvalid):
            merkle.verify_consistency(other_m, n, r_m, r_n, proof)
    other_n = draw.draw(st.integers(m + 1, 310))
    if consistency_shape(m, other_n) != consistency_shape(m, n):
        with pytest.raises(ProofInvalid):
            merkle.verify_consistency(m, other_n, r_m, r_n, proof)
    else:
        merkle.verify_consistency(m, other_n, r_m, r_n, proof)


def test_consistency_edge_cases() -> None:
    r = merkle.root(data(5))
    merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, r, [])
    merkle.verify_consistency(5, 5, r, r, [])
    with pytest.raises(ProofInvalid):
        merkle.verify_consistency(5, 5, r, merkle.root(data(4)), [])
    with pytest.raises(ProofInvalid):
        merkle.verify_consistency(3, 5, merkle.root(data(3)), r, [])
    with pytest.raises(ProofInvalid):
        merkle.verify_consistency(6, 5, r, r, [])
    with pytest.raises(ProofInvalid):
        merkle.verify_inclusion(b"short", 0, 1, [], r)


def test_generators_refuse_bad_arguments() -> None:
    with pytest.raises(InvalidInput):
        merkle.inclusion_path(5, 5)
    with pytest.raises(InvalidInput):
        merkle.consistency_path(0, 5)
    with pytest.raises(InvalidInput):
        merkle.consistency_path(6, 5)
    with pytest.raises(InvalidInput):
        merkle.subtree_decomposition(3, 5)  # not aligned


def test_proof_json_round_trip() -> None:
    leaf_hashes = hashes(11)
    inc = InclusionProof(index=3, tree_size=11, hashes=tuple(merkle.inclusion_proof(3, leaf_hashes)))
    assert InclusionProof.from_json(inc.to_json()) == inc
    inc.verify(leaf_hashes[3], merkle.root_from_leaf_hashes(leaf_hashes))
    con = ConsistencyProof(first=4, second=11, hashes=tuple(merkle.consistency_proof(4, leaf_hashes)))
    assert ConsistencyProof.from_json(con.to_json()) == con
    assert set(con.to_json()) == {"first", "second", "hashes"}
    for bad in (
        {"index": -1, "tree_size": 2, "hashes": []},
        {"index": 0, "tree_size": 2, "hashes": ["!"]},
        {"index": True, "tree_size": 2, "hashes": []},
        {"index": 0, "tree_size": 2, "hashes": ["AAAA"]},
    ):
        with pytest.raises(InvalidInput):
            InclusionProof.from_json(bad)
