"""An erased contact replayed before its tombstone does not come back; a newer one does."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from notify.progress import TopicEnds
from notify.suppressions import AddressHashes

from clameur.events import Contact, utc_now
from clameur.topics import Topics
from tests.conftest import TEST_SECRET, Infra
from tests.notify.conftest import RunningNotify
from tests.notify.forgetting import key_of, publish_contacts
from tests.support import eventually


async def test_a_contact_recorded_before_its_erasure_is_skipped_and_one_after_is_stored(
    notify: RunningNotify, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    erased_email, later_email = f"gone.{case_id}@example.org", f"later.{case_id}@example.org"
    erased_key, later_key = key_of(erased_email), key_of(later_email)
    now = utc_now()
    for key in (erased_key, later_key):
        await notify.database.execute(
            "INSERT INTO notify.erasures (supporter_key, erased_at) VALUES ($1, $2)", key, now
        )
    replayed = Contact(
        supporter_key=erased_key,
        email=erased_email,
        first_name="Gone",
        locale="fr",
        recorded_at=now - timedelta(minutes=1),
    )
    fresh = Contact(
        supporter_key=later_key,
        email=later_email,
        first_name="Later",
        locale="fr",
        recorded_at=now + timedelta(seconds=1),
    )
    await publish_contacts(infra.kafka, topics, [replayed, fresh])

    async def fresh_stored() -> bool:
        return bool(
            await notify.database.fetchval(
                "SELECT count(*) FROM notify.contacts WHERE supporter_key = $1", later_key
            )
        )

    await eventually(fresh_stored, within=30, what="the contact signed after the erasure stored")
    stored_hash = await notify.database.fetchval(
        "SELECT address_hash FROM notify.contacts WHERE supporter_key = $1", later_key
    )
    assert stored_hash == AddressHashes(TEST_SECRET).of(later_email)

    ends = TopicEnds(infra.kafka, topics.contacts)
    await ends.start()
    try:
        published_to = await ends.end_offsets()  # both contacts (and any ticks) are below these
    finally:
        await ends.stop()

    async def all_read() -> bool:
        rows = await notify.database.fetch(
            "SELECT partition, next_offset FROM notify.consumer_offsets WHERE group_id = $1 AND topic = $2",
            f"{topics.prefix}notify-contacts",
            topics.contacts,
        )
        stored = {row["partition"]: row["next_offset"] for row in rows}
        return all(stored.get(p, 0) >= end for p, end in published_to.items())

    await eventually(all_read, within=30, what="both contacts read")
    assert (
        await notify.database.fetchval(
            "SELECT count(*) FROM notify.contacts WHERE supporter_key = $1", erased_key
        )
        == 0
    )
