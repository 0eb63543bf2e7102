"""Each service's Kafka user and the least it may do: the ACLs of docs/operations.md.

A service reads and writes only the topics its code uses, and joins only its own
consumer groups; anything else the broker refuses with an authorization error.  The
grants are plain data (:func:`service_grants`), written to the cluster by
:func:`create_acls` with the provisioning (super) user; creating an ACL that exists is
a no-op, so provisioning may run on every deploy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest

from clameur.kafka import Kafka, client_kwargs
from clameur.topics import Topics


class Resource(IntEnum):
    """Kafka's resource types (the wire values of the CreateAcls request)."""

    TOPIC = 2
    GROUP = 3
    CLUSTER = 4


class Operation(IntEnum):
    READ = 3
    WRITE = 4
    CREATE = 5
    DESCRIBE = 8


class Pattern(IntEnum):
    LITERAL = 3
    PREFIXED = 4


_ALLOW = 3
_ANY_HOST = "*"


@dataclass(frozen=True)
class Grant:
    """One ACL: the service's user may ``operation`` on ``resource`` ``name`` (or every name
    starting with it, when ``pattern`` is PREFIXED)."""

    resource: Resource
    name: str
    operation: Operation
    pattern: Pattern = Pattern.LITERAL

    def describe(self) -> str:
        prefixed = "*" if self.pattern is Pattern.PREFIXED else ""
        return f"{self.operation.name} {self.resource.name.lower()} {self.name}{prefixed}"


def _reads(*topics: str) -> list[Grant]:
    return [Grant(Resource.TOPIC, topic, Operation.READ) for topic in topics]


def _writes(*topics: str) -> list[Grant]:
    return [Grant(Resource.TOPIC, topic, Operation.WRITE) for topic in topics]


def service_grants(topics: Topics, *, tally_group: str, notify_groups: str) -> dict[str, list[Grant]]:
    """What each service's user may do, by user name (``intake``, ``tally``, ``notify``).

    Read implies Describe (metadata, end offsets) and Write on a topic implies the
    idempotent producer's right to an id (KIP-679), so neither is granted apart.
    ``notify_groups`` is the prefix of notify's five consumer groups.
    """
    t = topics
    return {
        # Signs: publishes signatures and contacts; learns the cases (a group-less reader).
        "intake": [*_writes(t.signatures, t.contacts), *_reads(t.cases)],
        # Counts signatures in its group; its outbox relay publishes cases, case events and
        # invalidations (on signatures); poison goes to the signatures DLQ.
        "tally": [
            *_reads(t.signatures),
            Grant(Resource.GROUP, tally_group, Operation.READ),
            *_writes(t.cases, t.case_events, t.signatures, t.dlq(t.signatures)),
        ],
        # Reads every topic into its own groups; publishes erasures (signatures), tombstones
        # and ticks (contacts), suppressions, and the poison of what it reads.
        "notify": [
            *_reads(t.signatures, t.contacts, t.suppressions, t.cases, t.case_events),
            Grant(Resource.GROUP, notify_groups, Operation.READ, Pattern.PREFIXED),
            *_writes(t.signatures, t.contacts, t.suppressions),
            *_writes(*(t.dlq(x) for x in (t.signatures, t.contacts, t.suppressions, t.cases, t.case_events))),
        ],
    }


class AclRefused(RuntimeError):
    """The cluster refused to create an ACL (the provisioning user is no super user, or no
    authorizer is configured)."""


async def create_acls(admin: Kafka, grants: Mapping[str, Iterable[Grant]]) -> int:
    """Create every grant as an ALLOW ACL for ``User:<name>``, from any host; returns how many.

    ``admin`` must log in as a user that may alter the cluster's ACLs (a super user).
    Raises :class:`AclRefused` with the broker's reason when one is refused.
    """
    return await _each(admin, grants, CreateAclsRequest, "creation_responses")


async def delete_acls(admin: Kafka, grants: Mapping[str, Iterable[Grant]]) -> int:
    """Delete the ACLs :func:`create_acls` made for these grants (a user retired, a test's
    topics deleted); deleting one that is not there is no error."""
    return await _each(admin, grants, DeleteAclsRequest, "filter_responses")


async def _each(
    admin: Kafka,
    grants: Mapping[str, Iterable[Grant]],
    request: type[CreateAclsRequest | DeleteAclsRequest],
    answers: str,
) -> int:
    client = AIOKafkaClient(**client_kwargs(admin), client_id="clameur-provision")
    await client.bootstrap()
    done = 0
    try:
        for user, user_grants in grants.items():
            for grant in user_grants:
                principal = f"User:{user}"
                response = await client.send(
                    client.get_random_node(),
                    request(
                        grant.resource,
                        grant.name,
                        grant.pattern,
                        principal,
                        _ANY_HOST,
                        grant.operation,
                        _ALLOW,
                    ),
                )
                for error_code, message, *_ in getattr(response, answers):
                    if error_code:
                        name = for_code(error_code).__name__
                        raise AclRefused(f"{principal} {grant.describe()}: {name} {message or ''}")
                done += 1
    finally:
        await client.close()
    return done
