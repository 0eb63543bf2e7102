"""What a service refuses to start with once it can be reached from outside its machine.

The dev secret and admin token are public (they are in this repository).  They are
safe only while nothing but the machine itself can reach the service, so they are
refused whenever the service listens on anything other than loopback, whatever
``CLAMEUR_ENV`` says: a container started with ``CLAMEUR_ENV=dev`` on ``0.0.0.0`` is
as open as production.
"""

from __future__ import annotations

import ipaddress

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
