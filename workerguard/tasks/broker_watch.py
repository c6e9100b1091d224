"""One line in the guard's log when it loses the broker, one when it consumes again.

Celery's own lines are scattered (a warning with the error, a deprecation notice, one
"Cannot connect" per retry, then "Connected to", which it also logs at the first start).
This consumer bootstep says it once each way, with the outage's length, so "the guard
was deaf from 10:04:12 to 10:04:19" reads straight off the log:

* ``broker lost: ...``: the consumer stopped consuming because its connection failed
  (a restart of the consumer, not a shutdown; Celery's warning just before names the
  error);
* ``broker back after 7.1 s: consuming again``: the consumer runs again, its queues
  declared anew (an emptied Redis lost their bindings).

Both at WARNING, so the end of an outage is logged wherever its start is.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, bootsteps

log = logging.getLogger("workerguard.broker")


class BrokerWatch(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step after the task consumer: started at each (re)connection."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.consuming = False
        self.lost_at: float | None = None

    def start(self, parent: Any) -> None:
        if self.lost_at is not None:
            log.warning("broker back after %.1f s: consuming again", time.monotonic() - self.lost_at)
            self.lost_at = None
        self.consuming = True

    def stop(self, parent: Any) -> None:
        if self.consuming and parent.blueprint.state == bootsteps.RUN:  # a restart: the connection failed
            self.lost_at = time.monotonic()
            log.warning("broker lost: the guard takes no request until it is back "
                        "(Celery reconnects)")
        self.consuming = False

    def shutdown(self, parent: Any) -> None:
        self.consuming = False


def install(app: Celery) -> None:
    app.steps["consumer"].add(BrokerWatch)
