"""Running the HTTPS server: one process, or pre-forked workers sharing one listening socket.

Python's GIL keeps one process on one core; ingest (parsing, hashing, encryption) is CPU work,
so ``workers > 1`` forks that many processes after the passphrase and TLS files have been
checked. The passphrase is stretched (scrypt) once, by the supervisor; each worker inherits the
unlocked keyring in process memory (never through the environment or a file) and opens the home
itself from it, with its own database connections.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import logging
import logging.handlers
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from medvault.api.app import create_app
from medvault.api.health import Listeners
from medvault.config import load_settings
from medvault.crypto.keyring import KeyringFile
from medvault.errors import ConfigError, MedvaultError
from medvault.home import KEYRING_FILE, OpenHome, open_home
from medvault.ledger.policy import majority
from medvault.witnessing import Witnessing, alert_on_problem, witness_policy, witness_ssl_context

if TYPE_CHECKING:
    from medvault.dimse.server import DimseServer

log = logging.getLogger("medvault.server")


def _private_log(path: Path) -> Path:
    """A log file only its owner can read (0600): logs name users and client addresses."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    path.chmod(0o600)
    return path


def setup_logging(root: Path) -> None:
    """Access and error logs go to HOME/logs/access.log: paths and statuses, never query strings."""
    logs = root / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    handler = logging.handlers.WatchedFileHandler(_private_log(logs / "access.log"))
    handler.setFormatter(logging.Formatter(f"%(asctime)s [{os.getpid()}] %(name)s %(message)s"))
    for name in ("medvault.access", "medvault.errors", "medvault.server"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.handlers = [handler]
        logger.propagate = False
    audit = logging.handlers.WatchedFileHandler(_private_log(logs / "audit.log"))
    audit.setFormatter(logging.Formatter("%(message)s"))
    audit_logger = logging.getLogger("medvault.audit")
    audit_logger.setLevel(logging.INFO)
    audit_logger.handlers = [audit]
    audit_logger.propagate = False


def _uvicorn_config(opened: OpenHome, listeners: Listeners) -> uvicorn.Config:
    settings = opened.settings
    application = create_app(
        opened.archive,
        api_keys=opened.api_keys,
        users=opened.users,
        guard=opened.guard,
        server=settings.server,
        oidc=opened.oidc,
        alerts=opened.alerts,
        metrics_dir=opened.root / METRICS_DIR,
    )
    from medvault.export import ExportSource

    application.state.export_source = ExportSource.of(opened)
    application.state.listeners = listeners  # what /healthz reports
    application.state.home_root = opened.root  # /api/retention reads and writes [retention] there
    witnesses = settings.ledger.witnesses
    application.state.witness_quorum = settings.ledger.witness_quorum or majority(witnesses)
    # proxy_headers off: X-Forwarded-For must not let a client choose the address that lockout,
    # the ledger and the audit trail record.
    common: dict[str, Any] = {
        "access_log": False,
        "log_level": "warning",
        "server_header": False,
        "timeout_keep_alive": 30,
        "proxy_headers": False,
    }
    if settings.server.plain_http:
        return uvicorn.Config(application, **common)
    context = opened.ssl_context()
    return uvicorn.Config(
        application,
        ssl_context_factory=lambda _config, _default: context,
        **common,
    )


METRICS_DIR = "run/metrics"  # the workers' HTTP counters (api/metrics.py), emptied at every start

# glibc's mallopt(3) parameters, and the values the server uses (see keep_freed_memory).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 1024**2  # the largest glibc accepts on 64-bit systems
_TRIM_THRESHOLD = 256 * 1024**2


def keep_freed_memory() -> bool:
    """Keep freed buffers in the process for the next request instead of handing them back.

    Every STOW or WADO request allocates and frees buffers of a few hundred KB (an instance, its
    ciphertext). glibc serves those from fresh mmap()s and returns them with munmap(), so each
    request page-faults and zeroes new pages (on VMs that return freed memory to the host, each
    page also costs a trip to the hypervisor). With these thresholds they are reused from the heap:
    5x fewer page faults and ~10 % less CPU over the STOW+WADO bench, for 40-80 MB more resident
    memory per worker (docs/benchmarks.md). Returns False where the C library has no mallopt.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


# A worker that exits sooner than this after its start is failing to start, not crashing at random.
_QUICK_DEATH_SECONDS = 5


def _describe(exc: BaseException) -> str:
    """What stopped a worker, for the log: the type always, the text only where it cannot hold PHI
    (medvault's own errors never do; OS errors name files and ports, never patients)."""
    if isinstance(exc, MedvaultError | OSError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


def _bound_socket(host: str, port: int, what: str, setting: str) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEADDR, or a ``ConfigError`` saying what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on such sockets, and without it
    # every small response waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen for {what} on {host}:{port}: {exc.strerror}",
            hint=f"Another process may be using the port: stop it, or choose another with {setting}.",
        ) from None
    return sock


def _listen(host: str, port: int) -> socket.socket:
    sock = _bound_socket(host, port, "HTTPS", "--port or [server] port")
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _check_dimse_port(opened: OpenHome) -> None:
    """Fail at start, with a reason, when the DIMSE port is taken: the listener binds it in its own
    process, which would otherwise die and be restarted over and over."""
    config = opened.settings.dimse
    if config.enabled and config.port:
        _bound_socket(config.host, config.port, "DIMSE", "[dimse] port in medvault.toml").close()


def _checkpointer(opened: OpenHome) -> threading.Event:
    """Publish a signed checkpoint every [ledger] checkpoint_seconds while the log grows, and have
    the configured witnesses cosign it (retried every round until they have)."""
    stop = threading.Event()
    interval = max(1, opened.settings.ledger.checkpoint_seconds)
    witnessing = _witnessing(opened)

    def run() -> None:
        signed = -1
        try:
            while not stop.wait(interval):
                try:
                    ledger = opened.ledger
                    ledger.flush()
                    if ledger.size != signed:
                        ledger.checkpoint()
                        signed = ledger.size
                    if witnessing is not None and witnessing.pending():
                        witnessing.submit_latest()
                except Exception as exc:  # keep serving; the next round tries again
                    log.error("ledger checkpoint failed: %s", type(exc).__name__)
        finally:
            if witnessing is not None:
                witnessing.close()

    threading.Thread(target=run, name="medvault-checkpointer", daemon=True).start()
    return stop


def _witnessing(opened: OpenHome, *, check_only: bool = False) -> Witnessing | None:
    settings = opened.settings.ledger
    if not settings.witnesses:
        return None
    ledger = opened.ledger
    policy = witness_policy(ledger.verifier_key_text(), settings.witnesses, settings.witness_quorum)
    if check_only:
        witness_ssl_context(opened.root, settings.witness_ca)
        return None
    return Witnessing(
        ledger,
        policy,
        report=alert_on_problem(ledger, opened.archive.index, opened.alerts),
        ssl_context=witness_ssl_context(opened.root, settings.witness_ca),
    )


def _worker(root: Path, keyring: KeyringFile, sock: socket.socket, listeners: Listeners) -> None:
    setup_logging(root)
    opened = open_home(root, keyring)
    _publish_outbox(opened)  # a worker restarted after a crash: the dead one's events
    stop = _checkpointer(opened)
    # Long-lived startup objects out of the collector's scans, and fewer young-generation passes:
    # a request allocates many short-lived objects and few cycles (STOW +5 %, median of 3 runs).
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    try:
        uvicorn.Server(_uvicorn_config(opened, listeners)).run(sockets=[sock])
    finally:
        stop.set()
        opened.close()


def _start_dimse(opened: OpenHome) -> DimseServer | None:
    """The DIMSE listener of a served home (a thread in the calling process), if enabled."""
    config = opened.settings.dimse
    if not config.enabled:
        return None
    from medvault.audit import LogDimseAudit
    from medvault.dimse import dimse_tls_for_home, node_store, start_dimse_server

    if not config.allow_plain and not opened.settings.tls.own_ca:
        log.warning(
            "DIMSE listener not started: node certificates need medvault's own CA (see docs/dimse.md)"
        )
        return None
    tls = None if config.allow_plain else dimse_tls_for_home(opened)
    return start_dimse_server(
        archive=opened.archive,
        nodes=node_store(opened),
        tls=tls,
        audit=opened.archive.audit.dimse if opened.archive.audit is not None else LogDimseAudit(),
        host=config.host,
        port=config.port,
        ae_title=config.ae_title,
        allow_plain=config.allow_plain,
        pdp=opened.guard.pdp,
    )


def _start_monitor(opened: OpenHome) -> tuple[threading.Thread, threading.Event] | None:
    """The online monitor (medvault.alerting.worker) as a thread of the calling process."""
    if not opened.settings.monitor.enabled:
        return None
    from medvault.alerting.worker import MonitorWorker

    worker = MonitorWorker(
        ledger=opened.ledger,
        index=opened.archive.index,
        alerts=opened.alerts,
        users=opened.users,
        settings=opened.settings.monitor,
        root=opened.root,
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="medvault-monitor", daemon=True)
    thread.start()
    return thread, stop


def _stop_monitor(running: tuple[threading.Thread, threading.Event] | None) -> None:
    if running is not None:
        thread, stop = running
        stop.set()
        thread.join(30)


def _monitor_worker(root: Path, keyring: KeyringFile) -> None:
    """A process of its own for the online monitor (it restarts like any worker if it dies)."""
    setup_logging(root)
    opened = open_home(root, keyring)
    _publish_outbox(opened)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        from medvault.alerting.worker import MonitorWorker

        MonitorWorker(
            ledger=opened.ledger,
            index=opened.archive.index,
            alerts=opened.alerts,
            users=opened.users,
            settings=opened.settings.monitor,
            root=opened.root,
        ).run(stop)
    finally:
        opened.close()


def _start_retention(opened: OpenHome) -> tuple[threading.Thread, threading.Event] | None:
    """The scheduled retention job (medvault.compliance.scheduler) as a thread, if enabled."""
    if not opened.settings.retention.enabled:
        return None
    from medvault.compliance.scheduler import RetentionJob

    stop = threading.Event()
    thread = threading.Thread(
        target=RetentionJob(opened).run, args=(stop,), name="medvault-retention", daemon=True
    )
    thread.start()
    return thread, stop


def _retention_worker(root: Path, keyring: KeyringFile) -> None:
    """A process of its own for the scheduled retention job (one per server)."""
    setup_logging(root)
    opened = open_home(root, keyring)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        from medvault.compliance.scheduler import RetentionJob

        RetentionJob(opened).run(stop)
    finally:
        opened.close()


def _dimse_worker(root: Path, keyring: KeyringFile, listeners: Listeners) -> None:
    """A process of its own for the DIMSE listener, next to the HTTP workers."""
    setup_logging(root)
    opened = open_home(root, keyring)
    _publish_outbox(opened)
    server = _start_dimse(opened)
    listeners.set("dimse", "up" if server is not None else "off")  # bound and listening: accepts
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        listeners.set("dimse", "down")
        if server is not None:
            server.shutdown()
        opened.close()


def _check_monitor(opened: OpenHome) -> None:
    """Refuse, before serving, a [monitor] section the worker could not run with."""
    if not opened.settings.monitor.enabled:
        return
    from medvault.alerting.notify import Notifier
    from medvault.alerting.responses import parse_responses
    from medvault.monitor import rules_from

    rules_from(opened.settings.monitor.rules)
    parse_responses(opened.settings.monitor.responses)
    Notifier(opened.settings.monitor, opened.settings.ledger.origin, opened.root).check()


def _publish_outbox(opened: OpenHome) -> None:
    from medvault.fsck import publish_outbox

    published, _ = publish_outbox(opened.archive)
    if published:
        log.warning("%d ledger events of an interrupted write published", published)


def _sweep_leftovers(opened: OpenHome) -> None:
    """At every start: remove what interrupted writes left in storage (older than the grace
    period, so that a concurrent ``medvault import`` is never touched); ledgered when it removes."""
    from medvault.fsck import reconcile

    report = reconcile(opened.archive, repair=True)
    if report.removed or report.missing or report.published:
        log.warning("%s", report.summary())
    for uid in report.missing[:20]:
        log.error("instance %s is indexed but its object is missing from storage", uid)


def _ledger_configuration(opened: OpenHome) -> None:
    """Record the configuration in force at every start (its SHA-256, and the switches that weaken
    defaults): a change between two starts shows in the tamper-evident log as a different hash."""
    from datetime import UTC, datetime

    from medvault.audit import SYSTEM
    from medvault.config import CONFIG_FILE
    from medvault.ledger.events import AuditEvent, EventKind, ObjectRef, Outcome

    text = (opened.root / CONFIG_FILE).read_bytes()
    opened.ledger.append(
        AuditEvent(
            kind=EventKind.CONFIG_CHANGE,
            time=datetime.now(UTC),
            actor=SYSTEM,
            action="config.loaded",
            outcome=Outcome.SUCCESS,
            object=ObjectRef(type="config", id=CONFIG_FILE),
            details={
                "sha256": hashlib.sha256(text).hexdigest(),
                "plain_http": int(opened.settings.server.plain_http),
                "plain_dimse": int(opened.settings.dimse.allow_plain),
                "host": opened.settings.server.host,
            },
        )
    )


def serve(
    root: Path,
    passphrase: str | KeyringFile,
    *,
    host: str,
    port: int,
    workers: int,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. Checks the passphrase (or takes the keyring already unlocked
    with it), TLS material and ports before serving; ``on_listening`` runs once they are bound
    (to tell the user where to connect)."""
    settings = load_settings(root)
    setup_logging(root)
    # The one scrypt run: a wrong passphrase fails here, clearly. Every process opens the home from
    # this unlocked keyring (workers inherit it when forked), so the passphrase is not kept.
    if isinstance(passphrase, KeyringFile):
        keyring = passphrase
    else:
        keyring = KeyringFile.open(root / KEYRING_FILE, passphrase)
    del passphrase
    probe = open_home(root, keyring)
    try:
        if not settings.server.plain_http:
            probe.ssl_context()  # unreadable certificate or key: fail before forking
        _check_dimse_port(probe)
        _check_monitor(probe)
        _witnessing(probe, check_only=True)  # a bad [ledger] witnesses entry: fail before forking
        sock = _listen(host, port)
        _ledger_configuration(probe)
        _sweep_leftovers(probe)
    finally:
        probe.close()
    shutil.rmtree(root / METRICS_DIR, ignore_errors=True)  # counters start again with the server
    if on_listening is not None:
        on_listening()
    keep_freed_memory()  # before forking: the workers inherit it
    listeners = Listeners()  # shared with the workers forked below
    listeners.set("dimse", "down" if settings.dimse.enabled else "off")
    if workers <= 1:
        opened = open_home(root, keyring)
        dimse = _start_dimse(opened)
        listeners.set("dimse", "up" if dimse is not None else "off")
        monitor = _start_monitor(opened)
        retention = _start_retention(opened)
        checkpoints = _checkpointer(opened)
        try:
            uvicorn.Server(_uvicorn_config(opened, listeners)).run(sockets=[sock])
        finally:
            checkpoints.set()
            _stop_monitor(retention)
            _stop_monitor(monitor)
            if dimse is not None:
                dimse.shutdown()
            opened.close()
        return
    children: dict[int, tuple[float, str]] = {}
    quick_deaths: dict[str, int] = {}
    stopping = False

    def spawn(role: str = "http") -> None:
        pid = os.fork()
        if pid == 0:  # child
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 0
            try:
                if role == "dimse":
                    sock.close()
                    _dimse_worker(root, keyring, listeners)
                elif role == "monitor":
                    sock.close()
                    _monitor_worker(root, keyring)
                elif role == "retention":
                    sock.close()
                    _retention_worker(root, keyring)
                else:
                    _worker(root, keyring, sock, listeners)
            except BaseException as exc:  # the child must never return into the parent's code
                code = 1
                log.error("%s worker %d stopped: %s", role, os.getpid(), _describe(exc))
            finally:
                os._exit(code)
        children[pid] = (time.monotonic(), role)

    def stop_children() -> None:
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        stop_children()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for _ in range(workers):
        spawn()
    if settings.dimse.enabled:
        spawn("dimse")
    if settings.monitor.enabled:
        spawn("monitor")
    if settings.retention.enabled:
        spawn("retention")
    log.info("serving with %d worker processes", workers)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        entry = children.pop(pid, None)
        if entry is None or stopping:
            continue
        started, role = entry
        if role == "dimse":
            listeners.set("dimse", "down")  # until its successor listens
        # A worker that dies at once waits longer each time (1, 2, 4 ... 60 s) instead of spinning.
        quick = time.monotonic() - started < _QUICK_DEATH_SECONDS
        quick_deaths[role] = quick_deaths.get(role, 0) + 1 if quick else 0
        delay = min(2 ** (quick_deaths[role] - 1), 60) if quick else 0
        log.error("%s worker %d exited (status %d); starting another in %d s", role, pid, status, delay)
        deadline = time.monotonic() + delay
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopping:
            continue
        spawn(role)
        if stopping:  # SIGTERM arrived while forking: the new worker may have missed it
            stop_children()
    sock.close()
    sys.stdout.flush()
