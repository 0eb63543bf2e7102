"""The ``secure`` profile's broker: TLS, SCRAM users and ACLs, all made on this machine.

A local CA and the broker's certificate (for 127.0.0.1) are made with openssl into the
profile's folder, once; so are the Kafka users' random passwords.  The users are
written into the metadata log when the broker is formatted (``--add-scram``), the
broker checks every request with KRaft's StandardAuthorizer, and ``admin`` is its only
super user, for provisioning (docs/operations.md, "Kafka users and ACLs").
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from clameur.kafka import KafkaAccess
from devstack.processes import run

USERS = ("admin", "intake", "tally", "notify")
"""The provisioning super user, then one user per service."""
CONTROLLER_USER = "controller"
"""How the broker logs in to its own controller (SASL PLAIN: the controller cannot read
SCRAM credentials from the log it serves)."""


@dataclass(frozen=True)
class BrokerSecurity:
    """Where the secure broker keeps its certificates and its users' passwords."""

    folder: Path

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def keystore(self) -> Path:
        return self.folder / "broker.p12"

    @property
    def passwords_file(self) -> Path:
        return self.folder / "users.json"

    def ensure(self) -> None:
        """Make the CA, the broker's certificate and the passwords, unless already made."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.passwords_file.exists():
            passwords = {user: secrets.token_urlsafe(24) for user in (*USERS, CONTROLLER_USER)}
            self.passwords_file.touch(mode=0o600)
            self.passwords_file.write_text(json.dumps(passwords, indent=2))
        if not self.keystore.exists():
            self._make_certificates()

    def passwords(self) -> dict[str, str]:
        passwords: dict[str, str] = json.loads(self.passwords_file.read_text())
        return passwords

    def access(self, bootstrap: str, user: str, *, password: str | None = None) -> KafkaAccess:
        """How ``user`` reaches the broker (``password`` instead of the user's own, to try a wrong one)."""
        return KafkaAccess(
            bootstrap,
            "SASL_SSL",
            "SCRAM-SHA-512",
            user,
            SecretStr(password if password is not None else self.passwords()[user]),
            self.ca_file,
        )

    def scram_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create every user's SCRAM-SHA-512 credential."""
        return [
            argument
            for user, password in self.passwords().items()
            if user in USERS
            for argument in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]")
        ]

    def properties(self, port: int, controller_port: int) -> list[str]:
        """The broker's listeners, TLS, SASL and authorizer settings."""
        passwords = self.passwords()
        admin, controller = passwords["admin"], passwords[CONTROLLER_USER]
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{CONTROLLER_USER}" password="{controller}" user_{CONTROLLER_USER}="{controller}";'
        )
        scram = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="admin" password="{admin}";'
        )
        return [
            f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{port}",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL",
            "inter.broker.listener.name=SASL_SSL",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            "sasl.mechanism.controller.protocol=PLAIN",
            f"listener.name.controller.plain.sasl.jaas.config={plain}",
            f"ssl.keystore.location={self.keystore}",
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.password={admin}",
            f"ssl.truststore.location={self.ca_file}",
            "ssl.truststore.type=PEM",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            f"super.users=User:admin;User:{CONTROLLER_USER}",
            "allow.everyone.if.no.acl.found=false",
        ]

    def _make_certificates(self) -> None:
        # The keystore is locked with admin's password: one secret fewer to keep.
        folder, password = self.folder, self.passwords()["admin"]
        ca_key, key, csr = folder / "ca.key", folder / "broker.key", folder / "broker.csr"
        cert, extensions = folder / "broker.crt", folder / "broker.ext"
        extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        steps = {
            "making the local CA": "req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=clameur-local-ca"
            f" -keyout {ca_key} -out {self.ca_file}",
            "making the broker's key": "req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1"
            f" -keyout {key} -out {csr}",
            "signing the broker's certificate": f"x509 -req -in {csr} -CA {self.ca_file} -CAkey {ca_key}"
            f" -CAcreateserial -days 3650 -extfile {extensions} -out {cert}",
            "packing the broker's keystore": f"pkcs12 -export -in {cert} -inkey {key}"
            f" -certfile {self.ca_file} -name broker -passout pass:{password} -out {self.keystore}",
        }
        for what, arguments in steps.items():
            # The paths are under the profile's folder (no spaces: .cache/<profile>/...).
            run(["openssl", *arguments.split()], what=what)
