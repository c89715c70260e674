"""Two stream workers in one consumer group: partitions split, handed back, each example once."""

from __future__ import annotations

import pytest
from test_streamproc import Examples, raw_event, send_raw, start, wait_for  # noqa: F401 - start is a fixture

from streamproc.examples import ExampleBatch
from streamproc.kafka import read_all
from streamproc.settings import Settings
from streamproc.topics import Topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_workers_share_the_partitions_and_produce_each_example_once(settings: Settings, start) -> None:  # noqa: F811 - the fixture imported above
    a = start()
    wait_for(lambda: len(a.worker.assigned) == 4, what="first worker owns every partition")
    send_raw(settings, [(f"u{i % 40}".encode(), raw_event("click", f"a{i}", f"u{i % 40}", "m")) for i in range(2000)])
    b = start()
    wait_for(lambda: len(a.worker.assigned) + len(b.worker.assigned) == 4 and a.worker.assigned and b.worker.assigned,
             what="partitions split between the two workers")
    assert not (a.worker.assigned & b.worker.assigned)
    send_raw(settings, [(f"u{i % 40}".encode(), raw_event("click", f"b{i}", f"u{i % 40}", "m")) for i in range(2000)])
    ex = Examples(settings)
    ex.until(4000)
    # a worker counts its examples once the broker's acknowledgement reaches its acker, which can be
    # a moment after a reader already sees them
    wait_for(lambda: a.worker.examples_acked > 0 and b.worker.examples_acked > 0, what="both workers' examples acknowledged")
    # stopping one hands its partitions back to the other
    b.stop()
    wait_for(lambda: len(a.worker.assigned) == 4, what="partitions handed back")
    send_raw(settings, [(f"u{i % 40}".encode(), raw_event("click", f"c{i}", f"u{i % 40}", "m")) for i in range(1000)])
    ex.until(5000)
    a.stop()
    ex.close()
    # both workers stopped and committed: read the whole topic, nothing may be duplicated
    ids = [e for m in read_all(settings, Topics.from_settings(settings).examples) for e in ExampleBatch.decode(m.value).event_ids]
    assert len(ids) == 5000 and len(set(ids)) == 5000


def test_rebalances_while_events_flow_lose_and_duplicate_nothing(settings: Settings, start) -> None:  # noqa: F811 - the fixture imported above
    import threading

    from streamproc.publisher import EventPublisher

    n = 20_000
    published = threading.Event()

    def publish() -> None:
        with EventPublisher(settings) as pub:
            for i in range(n):
                pub.click(user_id=f"u{i % 100}", item_id="m", event_id=f"f{i}")
                if i % 200 == 0:
                    pub.flush()
        published.set()

    a = start()
    wait_for(lambda: len(a.worker.assigned) == 4, what="first worker owns every partition")
    threading.Thread(target=publish, daemon=True).start()
    wait_for(lambda: a.worker.examples_acked > 0, what="first examples")
    b = start()  # joins mid-stream: a drains and commits what it gives away
    wait_for(lambda: b.worker.examples_acked > 0 or published.is_set(), what="second worker working")
    b.stop()  # leaves mid-stream (if the publisher is still going): hands its partitions back
    wait_for(published.is_set, what="publisher done")
    wait_for(lambda: a.worker.examples_acked + b.worker.examples_acked >= n, what="every event processed")
    a.stop()
    ids = [e for m in read_all(settings, Topics.from_settings(settings).examples) for e in ExampleBatch.decode(m.value).event_ids]
    assert len(ids) == n and len(set(ids)) == n
