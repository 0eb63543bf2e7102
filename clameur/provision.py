"""One-shot provisioning: create the topics, migrate the schemas.

    python -m clameur.provision topics    # the topics of docs/architecture.md, with their settings
    python -m clameur.provision migrate   # tally's and notify's schemas, to the newest
    python -m clameur.provision all
    python -m clameur.provision acls      # each service's Kafka ACLs (done by `topics` over SASL_SSL)

Idempotent: safe to run on every deploy (the Kubernetes Jobs and `make up` do).  The
topics and ACLs need Kafka's provisioning user (CLAMEUR_KAFKA_USERNAME=admin on a
secured cluster: docs/operations.md, "Kafka users and ACLs"); on such a cluster
(CLAMEUR_KAFKA_SECURITY_PROTOCOL=SASL_SSL) ``topics`` also creates each service's ACLs on
them, so the Kubernetes topics Job leaves no topic that a service may not use.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from clameur.acls import create_acls, service_grants
from clameur.database import migrate
from clameur.settings import ClameurSettings
from clameur.topics import ensure_topics

SERVICES_WITH_SCHEMA = ("tally", "notify")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clameur.provision", description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["topics", "migrate", "all", "acls"])
    parser.add_argument(
        "--partitions", type=int, default=6, help="partitions of signatures.v2 and contacts.v1"
    )
    parser.add_argument(
        "--replication", type=int, default=1, help="replicas of every topic (3 on a production cluster)"
    )
    parser.add_argument("--tally-group", default="tally", help="with acls: tally's consumer group")
    parser.add_argument(
        "--notify-groups",
        default=None,
        help="with acls: the prefix of notify's groups (default <topic prefix>notify-)",
    )
    args = parser.parse_args(argv)
    settings = ClameurSettings()
    if args.what in ("topics", "all"):
        created = asyncio.run(
            ensure_topics(
                settings.kafka_access,
                settings.topics,
                signature_partitions=args.partitions,
                replication=args.replication,
                erasure_bound_s=settings.erasure_bound_s,
            )
        )
        print(f"topics: created {', '.join(created) if created else 'none (all present)'}")
    if args.what == "acls" or (
        args.what in ("topics", "all") and settings.kafka_security_protocol == "SASL_SSL"
    ):
        _provision_acls(settings, tally_group=args.tally_group, notify_groups=args.notify_groups)
    if args.what in ("migrate", "all"):
        for service in SERVICES_WITH_SCHEMA:
            migrate(service, settings.database_url)
            print(f"schema {service}: at the newest migration")
    return 0


def _provision_acls(settings: ClameurSettings, *, tally_group: str, notify_groups: str | None) -> None:
    groups = notify_groups or f"{settings.topic_prefix}notify-"
    grants = service_grants(settings.topics, tally_group=tally_group, notify_groups=groups)
    count = asyncio.run(create_acls(settings.kafka_access, grants))
    print(f"acls: {count} in place for the users {', '.join(grants)}")


if __name__ == "__main__":
    sys.exit(main())
