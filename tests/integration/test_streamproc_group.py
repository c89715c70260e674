"""Two stream workers in one consumer group: partitions split, handed back, each example once."""

from __future__ import annotations

import pytest
from test_streamproc import Examples, raw_event, send_raw, start, wait_for  # noqa: F401 - start is a fixture

from streamproc.examples import ExampleBatch
from streamproc.kafka import read_all
from streamproc.settings import Settings
from streamproc.topics import Topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_workers_share_the_partitions_and_produce_each_example_once(settings: Settings, start) -> None:
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
    assert a.worker.examples_acked > 0 and b.worker.examples_acked > 0
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
