"""`medvault init`, `serve`, `quickstart` and `version`: making and serving a home folder."""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from medvault import __version__
from medvault.cli._common import (
    HomeOption,
    PassphraseFile,
    announce,
    default_workers,
    err,
    get_passphrase,
    out,
    show_new_user,
)
from medvault.cli.importing import import_files
from medvault.config import DimseSettings, load_settings, write_setting
from medvault.errors import ConfigError
from medvault.home import OpenHome, init_home, open_home


def init(
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
    generate_passphrase: Annotated[
        bool, typer.Option("--generate-passphrase", help="Make a random passphrase and print it once.")
    ] = False,
    hostname: Annotated[
        list[str] | None,
        typer.Option("--hostname", help="Extra DNS name for the server certificate (repeatable)."),
    ] = None,
    ip: Annotated[
        list[str] | None, typer.Option("--ip", help="Extra IP address for the certificate (repeatable).")
    ] = None,
) -> None:
    """Create a home folder: sealed keyring, own CA and HTTPS certificate, empty index, and the first
    administrator (its one-time password and TOTP enrolment are shown once).

    The administrator manages users, keys and nodes and sees no images; give people clinical roles
    with `medvault users add`, and scripts an API key with `medvault apikeys create`.
    """
    if generate_passphrase:
        passphrase = secrets.token_urlsafe(24)
        err.print(
            "[bold]Generated keyring passphrase[/] "
            "(store it in a password safe; without it the home is unreadable):"
        )
        err.print(passphrase, highlight=False)
    else:
        passphrase = get_passphrase(passphrase_file, confirm=True)
    created = init_home(home, passphrase, hostnames=hostname or (), ip_addresses=ip or ())
    out.print(f"Created {home} (CA to trust: {home / 'tls' / 'ca.crt'}).")
    show_new_user(created, home)


def serve(
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default from medvault.toml).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from medvault.toml, 8443).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Worker processes (default: [server] workers, else one per core)."),
    ] = None,
) -> None:
    """Serve DICOMweb over HTTPS from a home folder."""
    from medvault.api.server import serve as serve_forever

    settings = load_settings(home)
    host = host or settings.server.host
    port = port or settings.server.port
    count = workers or settings.server.workers or default_workers()
    serve_forever(
        home,
        get_passphrase(passphrase_file),
        host=host,
        port=port,
        workers=count,
        on_listening=lambda: announce(home, settings, host, port, count),
    )


# -- quickstart ------------------------------------------------------------------------------------


def _port_free(host: str, port: int) -> bool:
    """Whether host:port can be bound now (as `serve` will bind it, SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _check_ports(listeners: list[tuple[str, str, int, str]]) -> None:
    """Refuse, before anything is created or printed, to start where a port is taken."""
    taken = [entry for entry in listeners if not _port_free(entry[1], entry[2])]
    if taken:
        raise ConfigError(
            "; ".join(f"the {what} port {host}:{port} is in use" for what, host, port, _ in taken),
            hint="Stop the other process, or choose "
            + " and ".join(f"another with {option} N" for *_, option in taken)
            + " (nothing was changed).",
        )


QUICKSTART_KEY_PREFIX = "quickstart-"


def _fresh_demo_key(opened: OpenHome) -> tuple[str, list[str]]:
    """A new one-day archivist key for this run; the keys of earlier runs are revoked (and named),
    so re-runs do not pile up live keys."""
    revoked = []
    for info in opened.api_keys.list():
        if info.name.startswith(QUICKSTART_KEY_PREFIX) and info.revoked_at is None:
            opened.api_keys.revoke(info.name)
            revoked.append(info.name)
    key = opened.api_keys.create(
        f"{QUICKSTART_KEY_PREFIX}{secrets.token_hex(3)}", role="archivist", expires_days=1
    )
    return key, revoked


def quickstart(
    home: Annotated[Path, typer.Option("--home", help="Demo home folder.")] = Path("medvault-demo"),
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTPS port.")] = 8443,
    dimse_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="DICOM TLS port (default: the demo's [dimse] port, 2762); kept for re-runs.",
        ),
    ] = None,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Start the server afterwards.")
    ] = True,
) -> None:
    """Try medvault on this machine: create a demo home (if needed), load a sample CT study,
    print how to query it, and serve it on https://127.0.0.1:PORT.

    The demo keeps its generated passphrase in HOME.passphrase beside the home folder (mode 0600)
    so it can be run again; a real deployment uses `medvault init` and keeps the passphrase elsewhere.
    Each run prints a new one-day API key and revokes the one of the run before.
    """
    from medvault.sample import generate_study

    passphrase_path = home.with_name(home.name + ".passphrase")
    exists = (home / "keyring.sealed").exists()
    dimse = load_settings(home).dimse if exists else DimseSettings()
    if serve_after:
        listeners = [("HTTPS", "127.0.0.1", port, "--port")]
        if dimse.enabled:
            listeners.append(("DIMSE", dimse.host, dimse_port or dimse.port, "--dimse-port"))
        _check_ports(listeners)
    if not exists:
        passphrase = secrets.token_urlsafe(24)
        fd = os.open(passphrase_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(passphrase + "\n")
        created = init_home(home, passphrase)
        where = ["--home", str(home), "--passphrase-file", str(passphrase_path)]
        reset_mfa = shlex.join(["medvault", "users", "reset-mfa", "admin", *where])
        err.print(f"Created demo home {home}; its passphrase is in {passphrase_path} (demo only).")
        err.print(f"Administrator 'admin', one-time password: {created.password}", highlight=False)
        err.print(f"  its TOTP enrolment: {reset_mfa}", highlight=False, soft_wrap=True)
    if dimse_port is not None and dimse_port != dimse.port:
        write_setting(home, "dimse", "port", dimse_port)
    passphrase = passphrase_path.read_text(encoding="utf-8").strip()
    opened = open_home(home, passphrase)
    try:
        # The sample's UIDs depend only on the seed: a re-run finds the same study already present.
        with tempfile.TemporaryDirectory(dir=home, prefix="sample-") as sample_dir:
            files = generate_study(
                Path(sample_dir),
                seed=7,
                series=1,
                instances=8,
                rows=256,
                cols=256,
                patient_name="DEMO^PATIENT",
                patient_id="DEMO-0001",
            )
            summary = import_files(opened.archive, files, show_progress=False)
        key, revoked = _fresh_demo_key(opened)
        ca = (home / "tls" / "ca.crt").resolve()
        url = f"https://127.0.0.1:{port}/dicomweb"
        out.print(f"Sample study: {summary.stored} stored, {summary.already_present} already present.")
        out.print(f"DICOMweb URL : {url}")
        if dimse.enabled:
            out.print(f"DICOM TLS    : {dimse.host}:{dimse_port or dimse.port}, AE title {dimse.ae_title}")
        out.print(f"CA to trust  : {ca}")
        out.print(f"API key      : {key}  (archivist: read, store, delete; expires in 1 day)")
        if revoked:
            out.print(f"               (revoked the key of the previous run: {', '.join(revoked)})")
        out.print("Try:", style="bold")
        print(f"  curl --cacert {ca} -H 'Authorization: Bearer {key}' '{url}/studies?PatientID=DEMO-0001'")
    finally:
        opened.close()
    if serve_after:
        from medvault.api.server import serve as serve_forever

        count = default_workers()
        serve_forever(
            home,
            opened.keyring_file,  # unlocked above: no second scrypt run
            host="127.0.0.1",
            port=port,
            workers=count,
            on_listening=lambda: announce(home, opened.settings, "127.0.0.1", port, count),
        )


def version() -> None:
    """Print the version."""
    out.print(__version__)
