"""Witnessed checkpoints end to end (issue 18): three real `medvault witness serve` processes, a real
archive submitting to them; the honest path, a witness down, a ledger rewritten and re-signed with
the archive's own key, a ledger rolled back, and the witness protocol's refusals on the wire."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from medvault.crypto.keyring import TEST_SCRYPT, load_keyring
from medvault.home import KEYRING_FILE, ledger_signing_seed, open_home
from medvault.ledger.cosignature import Cosigner, cosignatures
from medvault.ledger.merkle import leaf_hash, root_from_leaf_hashes
from medvault.ledger.note import Signer
from medvault.ledger.policy import parse_policy
from medvault.ledger.store import Ledger
from medvault.ledger.witness import format_add_checkpoint
from medvault.sample import generate_study
from medvault.witness_home import init_witness, open_witness
from tests.conftest import PASSPHRASE, Home, Server, free_port, make_home, start_server

pytestmark = pytest.mark.integration


@dataclass
class Witness:
    root: Path
    name: str
    port: int
    key: str  # cosignature verifier key
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def client(self) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.root / "tls/ca.pem"))
        return httpx.Client(base_url=self.url, verify=context, timeout=10)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "medvault.cli", "witness", "serve", "--home", str(self.root)],
            env={**os.environ, "MEDVAULT_PASSPHRASE": PASSPHRASE},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (
                self.process.stderr.read().decode() if self.process.stderr else ""
            )
            try:
                with self.client() as client:
                    if client.get("/healthz").status_code == 200:
                        return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"witness {self.name} did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()


def make_witness(root: Path, name: str, log_key: str) -> Witness:
    port = free_port()
    cosigner = init_witness(root, name=name, passphrase=PASSPHRASE, port=port, scrypt=TEST_SCRYPT)
    opened = open_witness(root, PASSPHRASE)
    try:
        opened.add_log(log_key)
    finally:
        opened.close()
    return Witness(root, name, port, cosigner.verifier_key_text())


@dataclass
class World:
    home: Home
    witnesses: list[Witness]
    log_key: str
    start: Callable[[], Server]
    auditor: str  # an API key that may read the ledger


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    home = make_home(tmp_path / "archive")
    opened = open_home(home.root, PASSPHRASE)  # in-process: the CLI's start-up costs seconds a call
    try:
        log_key = opened.ledger.verifier_key_text()
        auditor = opened.api_keys.create("audit", role="auditor")
    finally:
        opened.close()
    witnesses = [make_witness(tmp_path / f"w{i}", f"witness{i}.example/w", log_key) for i in range(3)]
    (home.root / "witness-cas.pem").write_bytes(
        b"".join((w.root / "tls/ca.pem").read_bytes() for w in witnesses)
    )
    home.set_config("ledger", "witnesses", json.dumps([f"{w.key} {w.url}" for w in witnesses]))
    home.set_config("ledger", "witness_quorum", "2")
    home.set_config("ledger", "witness_ca", '"witness-cas.pem"')
    home.set_config("ledger", "checkpoint_seconds", "1")
    home.set_config("monitor", "enabled", "false")  # alerts here come from witnessing alone
    servers: list[Server] = []

    def start() -> Server:
        server = start_server(home)
        servers.append(server)
        return server

    try:
        for w in witnesses:
            w.spawn()  # the three start side by side
        for w in witnesses:
            w.wait_ready()
        yield World(home, witnesses, log_key, start, auditor)
    finally:
        for server in servers:
            server.stop()
        for w in witnesses:
            w.stop()


def traffic(server: Server, n: int = 3) -> None:
    with server.client() as client:
        for _ in range(n):
            assert client.get("/dicomweb/studies").status_code == 200


def wait_for(what: str, check: Callable[[], object], timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {value!r}")


def policy_of(world: World) -> Path:
    """The archive's witness policy, written once per test by `medvault ledger witness-policy` (the
    configuration does not change within a test; the command's start-up is what costs)."""
    path = world.home.root / "policy.txt"
    if not path.exists():
        world.home.cli("ledger", "witness-policy", "--out", str(path))
    return path


def served(server: Server, world: World) -> bytes:
    """What /ledger/checkpoint serves now."""
    with server.client(world.auditor) as client:
        return client.get("/ledger/checkpoint").content


def served_cosigners(server: Server, world: World) -> set[str]:
    note = served(server, world)
    policy = parse_policy(policy_of(world).read_text())
    return {c.name for c in policy.check(note).cosigned_by}


def checkpoint_size(server: Server, world: World) -> int:
    return parse_policy(policy_of(world).read_text()).check(served(server, world)).checkpoint.size


def alerts_text(home: Home) -> str:
    """Every alert's severity, subject and reasons, one per line (read from the home, as the
    officers' `medvault alerts` and /api/alerts do)."""
    opened = open_home(home.root, PASSPHRASE)
    try:
        return "\n".join(f"{a.severity} {a.subject}: {' '.join(a.reasons)}" for a in opened.alerts.find())
    finally:
        opened.close()


def test_checkpoints_are_cosigned_by_every_witness_and_verify_against_the_policy(world: World) -> None:
    server = world.start()
    traffic(server)
    names = {w.name for w in world.witnesses}
    wait_for("three cosignatures", lambda: served_cosigners(server, world) == names)
    policy = parse_policy(policy_of(world).read_text())
    assert policy.quorum == 2 and len(policy.witnesses) == 3
    result = policy.check(served(server, world))
    assert result.met
    # each witness now holds exactly that tree, and says so with its own cosignature
    for w in world.witnesses:
        with w.client() as client:
            view = client.get("/latest", params={"origin": result.checkpoint.origin})
        assert view.status_code == 200
        held = policy.check(view.content)
        assert held.checkpoint.size >= 1 and w.name in {c.name for c in held.cosigned_by}
    verified = world.home.cli("ledger", "verify", "--witness-policy", str(policy_of(world)), "--no-objects")
    assert "ledger OK" in verified.stdout and "witnessed up to size" in verified.stdout


def test_a_witness_down_never_blocks_writes_and_is_alerted_on(world: World) -> None:
    server = world.start()
    traffic(server)
    wait_for("first cosignatures", lambda: len(served_cosigners(server, world)) == 3)
    down = world.witnesses[2]
    down.stop()
    traffic(server, 5)  # reads and their ledger events go on
    with server.client() as client:
        assert client.get("/dicomweb/studies").status_code == 200
    # the quorum of 2 still cosigns new checkpoints; the one down is alerted on after 3 rounds
    size_before = checkpoint_size(server, world)
    wait_for("an alert about the witness that is down", lambda: down.name in alerts_text(world.home))

    def newer_and_two() -> bool:
        result = parse_policy(policy_of(world).read_text()).check(served(server, world))
        return result.met and result.checkpoint.size > size_before

    wait_for("a newer checkpoint cosigned by the two left", newer_and_two)
    assert "unreachable" in alerts_text(world.home)
    # back up: it catches up (409 with its size, then a proof from there)
    down.start()
    traffic(server)
    wait_for("the third cosignature again", lambda: len(served_cosigners(server, world)) == 3)


def forge_ledger(home: Home, alter: int) -> None:
    """What an operator (or a thief of the archive's key) could do: rewrite one entry, rebuild the
    tree and re-sign every checkpoint with the archive's own key. Locally it all verifies."""
    db = home.root / "ledger.db"
    origin = next(
        line.split('"')[1]
        for line in (home.root / "medvault.toml").read_text().splitlines()
        if line.startswith("origin")
    )
    signer = Signer.from_private_bytes(
        name=origin, seed=ledger_signing_seed(load_keyring(home.root / KEYRING_FILE, PASSPHRASE))
    )
    original = Ledger.open(db, signer=None, origin=origin)
    leaves = original.entries(0, original.size)
    original.close()
    entry = json.loads(leaves[alter])
    entry["actor"]["id"] = "someone-else"
    leaves[alter] = json.dumps(entry, separators=(",", ":"), sort_keys=True).encode()
    forged_path = home.root / "forged.db"
    forged = Ledger.open(forged_path, signer=signer, origin=origin)
    forged.append_leaves(leaves)
    forged.checkpoint()
    forged.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.move(forged_path, db)
    for suffix in ("-wal", "-shm"):
        Path(f"{forged_path}{suffix}").unlink(missing_ok=True)


def test_a_rewritten_and_resigned_ledger_is_refused_by_the_witnesses_and_fails_verify(world: World) -> None:
    server = world.start()
    traffic(server)
    wait_for("cosignatures", lambda: len(served_cosigners(server, world)) == 3)
    policy = policy_of(world)
    server.stop()
    forge_ledger(world.home, alter=2)
    # without the witnesses, the forgery passes: every checkpoint is signed by the archive's key
    assert "ledger OK" in world.home.cli("ledger", "verify", "--no-objects").stdout
    # with them, it does not: the witnesses still hold the true roots
    verify = world.home.cli("ledger", "verify", "--witness-policy", str(policy), "--no-objects", check=False)
    assert verify.returncode == 1
    assert "the checkpoint witness" in verify.stdout and "does not match the stored entries" in verify.stdout
    # and the archive, restarted on the forged ledger, is refused and raises a critical alert
    server = world.start()
    traffic(server)
    wait_for(
        "a critical alert from the witnesses' refusal", lambda: "not consistent" in alerts_text(world.home)
    )
    for w in world.witnesses:
        refused = subprocess.run(
            [sys.executable, "-m", "medvault.cli", "witness", "status", "--home", str(w.root)],
            env={**os.environ, "MEDVAULT_PASSPHRASE": PASSPHRASE},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "refused" in refused  # kept as evidence against the log


def test_a_rolled_back_ledger_is_caught(world: World) -> None:
    db = world.home.root / "ledger.db"
    server = world.start()
    traffic(server)
    wait_for("cosignatures", lambda: len(served_cosigners(server, world)) == 3)
    server.stop()
    saved = world.home.root / "saved"
    saved.mkdir()
    for suffix in ("", "-wal"):
        if Path(f"{db}{suffix}").exists():
            shutil.copy(f"{db}{suffix}", saved)
    saved_size = Ledger.open(db, signer=None, origin=world.log_key.split("+", 1)[0]).size
    server = world.start()
    traffic(server, 10)
    wait_for(
        "the grown log cosigned by all three",
        lambda: (
            checkpoint_size(server, world) > saved_size + 10 and len(served_cosigners(server, world)) == 3
        ),
    )
    policy = policy_of(world)
    server.stop()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    for copy in saved.iterdir():
        shutil.move(copy, world.home.root / copy.name)
    verify = world.home.cli("ledger", "verify", "--witness-policy", str(policy), "--no-objects", check=False)
    assert verify.returncode == 1 and "rolled back or truncated" in verify.stdout
    server = world.start()  # the archive itself learns it from the witnesses' answers
    wait_for("a critical alert: rolled back", lambda: "rolled back" in alerts_text(world.home))


def test_the_witness_protocol_on_the_wire(world: World) -> None:
    w = world.witnesses[0]
    origin = world.log_key.split("+", 1)[0]
    stranger = Signer.from_private_bytes(name=origin, seed=bytes(range(32)))  # right origin, wrong key
    hashes = [leaf_hash(b"%d" % i) for i in range(4)]
    note = stranger.sign_checkpoint(origin, 4, root_from_leaf_hashes(hashes))
    other = Signer.from_private_bytes(name="other.example/log", seed=bytes(range(32)))
    with w.client() as client:

        def post(body: bytes) -> httpx.Response:
            return client.post("/add-checkpoint", content=body)

        assert post(format_add_checkpoint(0, [], note)).status_code == 403
        unknown = other.sign_checkpoint("other.example/log", 4, root_from_leaf_hashes(hashes))
        assert post(format_add_checkpoint(0, [], unknown)).status_code == 404
        assert post(b"old 01\n\n" + note).status_code == 400
        assert post(b"old 0\n" + b"x" * 70_000).status_code == 413
        assert client.get("/latest", params={"origin": "other.example/log"}).status_code == 404
    # the archive's own checkpoints: a 409 carries the witness's size as text/x.tlog.size
    server = world.start()
    traffic(server)
    wait_for("cosignatures", lambda: len(served_cosigners(server, world)) == 3)
    note = served(server, world)
    with w.client() as client:
        answer = client.post("/add-checkpoint", content=format_add_checkpoint(0, [], note))
    if answer.status_code == 409:
        assert answer.headers["content-type"] == "text/x.tlog.size"
        assert answer.text.strip().isdigit() and int(answer.text) >= 1
    else:  # the witness holds size 0? impossible after cosigning
        raise AssertionError(answer.text)
    # a cosignature verifies against the witness's key, and its line is in the served checkpoint
    assert cosignatures(note, [parse_policy(policy_of(world).read_text()).witnesses[0].verifier])


def mirror(world: World, server: Server, folder: Path, policy: Path) -> subprocess.CompletedProcess[str]:
    """`medvault ledger mirror … --once`, as an auditor runs it: no archive home, only the policy."""
    cas = world.home.root / "witness-cas.pem"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")}
    return subprocess.run(
        [sys.executable, "-m", "medvault.cli", "ledger", "mirror", server.url, "--to", str(folder),
         "--policy", str(policy), "--ca", str(world.home.ca), "--witness-ca", str(cas), "--once"],
        env=env | {"MEDVAULT_API_KEY": world.auditor},
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_mirror_keeps_a_verified_copy_and_catches_a_rewrite_and_a_split_view(
    world: World, tmp_path: Path
) -> None:
    server = world.start()
    traffic(server)
    wait_for("cosignatures", lambda: len(served_cosigners(server, world)) == 3)
    policy = policy_of(world)
    first = mirror(world, server, tmp_path / "mirror-a", policy)
    assert first.returncode == 0, first.stderr
    assert "mirror holds" in first.stdout and "alerts 0" in first.stdout
    held = Ledger.open(
        tmp_path / "mirror-a" / "mirror.db", signer=None, origin=world.log_key.split("+", 1)[0]
    )
    assert held.size >= 3  # the copy survives the archive: a ledger file of its own
    held.close()
    traffic(server, 4)
    again = mirror(world, server, tmp_path / "mirror-a", policy)
    assert again.returncode == 0 and "(+0)" not in again.stdout, again.stdout
    # the operator rewrites one entry and re-signs: the mirror that copied it before notices
    server.stop()
    forge_ledger(world.home, alter=1)
    server = world.start()
    rewritten = mirror(world, server, tmp_path / "mirror-a", policy)
    assert rewritten.returncode == 2 and "inconsistent" in rewritten.stderr, rewritten.stderr
    # a client that never saw the true log is shown the forged one: its witnesses' views differ
    fresh = mirror(world, server, tmp_path / "mirror-b", policy)
    assert fresh.returncode == 2 and "split_view" in fresh.stderr, fresh.stdout + fresh.stderr


def test_a_patient_receipt_verifies_offline_and_a_changed_one_does_not(world: World, tmp_path: Path) -> None:
    server = world.start()
    files = generate_study(tmp_path / "in", seed=7, series=1, instances=2, rows=16, cols=16,
                           patient_name="RECEIPT^PAT", patient_id="REC-77")  # fmt: skip
    body = b"".join(
        b"--b\r\nContent-Type: application/dicom\r\n\r\n" + p.read_bytes() + b"\r\n" for p in files
    )
    study = dcmread(files[0]).StudyInstanceUID
    with server.client() as client:
        stored = client.post(
            "/dicomweb/studies",
            content=body + b"--b--\r\n",
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        )
        assert stored.status_code == 200, stored.text
        for _ in range(3):
            assert client.get(f"/dicomweb/studies/{study}/metadata").status_code == 200
    wait_for("cosignatures", lambda: len(served_cosigners(server, world)) == 3)
    receipt = tmp_path / "receipt.json"
    made = world.home.cli(
        "patient", "receipt", "--patient-id", "REC-77", "--reference", "REQ-9", "--out", str(receipt)
    )
    assert "ledgered as patient.receipt" in made.stdout
    text = receipt.read_text()
    assert "REC-77" not in text and "RECEIPT" not in text  # pseudonyms only
    policy = policy_of(world)
    verifier = Path(sys.executable).parent / "medvault-receipt-verify"  # the stand-alone command
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVAULT_")}

    def check(path: Path, policy_file: Path = policy) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(verifier), str(path), "--policy", str(policy_file)], cwd=tmp_path,
                              env=clean_env, capture_output=True, text=True, timeout=60)  # fmt: skip

    ok = check(receipt)
    assert ok.returncode == 0, ok.stderr
    assert (
        "receipt verified" in ok.stdout and ok.stdout.count("study.read") + ok.stdout.count("retrieve") >= 1
    )
    doc = json.loads(text)
    assert len(doc["entries"]) >= 4  # the store and the reads
    # one access changed (who saw it): the proof no longer holds
    entry = json.loads(base64.b64decode(doc["entries"][-1]["entry"]))
    entry["actor"]["id"] = "a-colleague"
    doc["entries"][-1]["entry"] = base64.b64encode(json.dumps(entry).encode()).decode()
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(doc))
    refused = check(changed)
    assert refused.returncode == 1 and "NOT verified" in refused.stderr
    # a policy that trusts other witnesses: the quorum is not met
    stranger = Cosigner.from_private_bytes(name="stranger.example/w", seed=bytes(32)).verifier_key_text()
    lines = [line for line in policy.read_text().splitlines() if not line.startswith("witness")]
    other = tmp_path / "other-policy.txt"
    other.write_text("\n".join([*lines[:-1], f"witness {stranger}", "quorum 1"]) + "\n")
    assert "cosigned by 0" in check(receipt, other).stderr
    page = tmp_path / "receipt.html"
    world.home.cli("patient", "receipt", "--patient-id", "REC-77", "--reference", "REQ-9", "--out", str(page),
                   "--format", "html")  # fmt: skip
    assert "medvault-receipt-verify" in page.read_text() and "REC-77" not in page.read_text()
