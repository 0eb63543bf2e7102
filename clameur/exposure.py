"""What a service refuses to start with once others can reach it or what it reaches.

Off loopback: the dev secret and admin token are public (they are in this repository).  They are
safe only while nothing but the machine itself can reach the service, so they are
refused whenever the service listens on anything other than loopback, whatever
``CLAMEUR_ENV`` says: a container started with ``CLAMEUR_ENV=dev`` on ``0.0.0.0`` is
as open as production.

In production: a Postgres connection that is not TLS with the server's certificate and
name checked (``sslmode=verify-full``), because signatures and contacts cross it.  (The
SMTP rule is notify's: ``notify.settings``.)
"""

from __future__ import annotations

import ipaddress
from urllib.parse import parse_qs, urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches this machine only (of names, localhost only)."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def refuse_dev_values_off_loopback(host: str, values: dict[str, tuple[str, str]]) -> None:
    """Raise ``ValueError`` if a setting (by its variable name) holds its dev value off loopback.

    ``values`` maps a variable's name to ``(its value, its dev value)``.
    """
    if is_loopback(host):
        return
    for name, (value, dev_value) in values.items():
        if value == dev_value:
            raise ValueError(
                f"{name} is the public development value and this service listens on {host!r} "
                f"(CLAMEUR_HOST), which is not loopback: set {name} to a long random value "
                "(for example `openssl rand -hex 32`), or listen on 127.0.0.1"
            )


def refuse_postgres_without_verified_tls(dsn: str) -> None:
    """Raise ``ValueError`` unless the DSN (a URL) asks for ``sslmode=verify-full``.

    ``require`` and ``verify-ca`` encrypt but accept a server of any name (or any
    certificate): a network attacker in the middle still reads every row.
    """
    modes = parse_qs(urlsplit(dsn).query).get("sslmode", [])
    if modes[-1:] != ["verify-full"]:
        raise ValueError(
            "CLAMEUR_DATABASE_URL must use TLS with the server's certificate and name checked in "
            "production: add ?sslmode=verify-full to the URL (and sslrootcert=<CA file> when the "
            "server's CA is a private one)"
        )
