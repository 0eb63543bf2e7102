"""The local stack, without Docker.

    python -m devstack up        # install what is missing, start everything, wait for /readyz
    python -m devstack down      # stop what it started (by process id), keep the data
    python -m devstack reset     # stop and delete the data
    python -m devstack status
    python -m devstack mail      # the latest messages in the local mail sink
    python -m devstack infra     # only Kafka and Postgres, topics and schemas (what tests need)
    python -m devstack rebuild   # replay every topic into empty databases; compare the counts

``--profile test`` runs the test stack: other ports and data than the dev stack.
CLAMEUR_* variables set in the environment are passed to the services, and a given
CLAMEUR_KAFKA, CLAMEUR_DATABASE_URL or CLAMEUR_SMTP_URL replaces the local one.
"""

from __future__ import annotations

import argparse
import os
import sys

from devstack.layout import PROFILES
from devstack.processes import StackError
from devstack.stack import Stack, mail_listing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack", description="Clameur's local stack, no Docker needed."
    )
    parser.add_argument(
        "command", choices=["up", "down", "reset", "status", "mail", "infra", "where", "rebuild"]
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="dev")
    parser.add_argument("--no-prometheus", action="store_true")
    parser.add_argument("--count", type=int, default=10, help="with mail: how many messages")
    parser.add_argument("--keep", action="store_true", help="with rebuild: keep the rebuilt database")
    args = parser.parse_args(argv)
    stack = Stack(PROFILES[args.profile], dict(os.environ))
    try:
        if args.command == "up":
            stack.up(with_prometheus=not args.no_prometheus)
        elif args.command == "down":
            stack.down()
        elif args.command == "reset":
            stack.reset()
        elif args.command == "status":
            stack.status()
        elif args.command == "mail":
            mail_listing(stack.profile.mail_dir, args.count)
        elif args.command == "rebuild":
            from devstack.rebuild import rebuild

            return rebuild(stack, keep=args.keep)
        elif args.command == "infra":
            stack.start_infrastructure()
            print(f"kafka {stack.kafka_bootstrap}\npostgres {stack.database_url}")
        else:
            stack.print_where()
    except StackError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
