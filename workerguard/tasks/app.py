"""The Celery app: configuration, queues, routing and the beat schedule.

Queues (contract): every guard consumes ``workerguard`` (the shared default) and
``workerguard.<host_id>``; sweeps go to the fanout exchange ``workerguard.broadcast``,
so each guard receives every sweep and sweeps only its own host.
"""

from __future__ import annotations

from celery import Celery
from kombu.entity import Exchange

from workerguard.config.load import Config
from workerguard.ops.connect import (
    celery_url,
    result_backend_settings,
    result_transport_options,
    sentinel_options,
    socket_options,
)
from workerguard.tasks import (
    broker_watch,
    caller_errors,
    closed_channel,
    context,
    loop_reads,
    reconnect,
    sentinel_pools,
)
from workerguard.tasks.routing import (
    BROADCAST,
    DEFAULT_QUEUE,
    SWEEP_TASK,
    direct_queue,
    host_queue,
    sweep_queue,
)
from workerguard.tasks.visibility import RESTORE_INTERVAL, UNACKED_MUTEX_EXPIRE, visibility_timeout


def make_app(config: Config, redis_url: str) -> Celery:
    """Build the guard's Celery app for ``config``, talking to ``redis_url``."""
    settings = config.settings
    closed_channel.install()
    sentinel_pools.install()
    loop_reads.install()
    url = celery_url(redis_url)
    app = Celery("workerguard", broker=url, backend=caller_errors.backend_url(url),
                 task_cls=caller_errors.TASK, set_as_current=False)
    app.conf.update(
        # JSON only: a pickle message is refused before it reaches a task.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        # What Flower needs to show each request with its arguments and result.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        result_extended=True,
        result_expires=int(settings.result_expires),
        # Routing.
        task_default_queue=DEFAULT_QUEUE,
        task_queues=[
            direct_queue(DEFAULT_QUEUE),
            direct_queue(host_queue(settings.host_id)),
            sweep_queue(),
        ],
        task_default_exchange=DEFAULT_QUEUE,
        task_default_routing_key=DEFAULT_QUEUE,
        # Celery's broadcast recipe, plus declaring the fanout exchange on publish:
        # kombu's Redis transport treats an undeclared exchange as direct and would
        # LPUSH the sweep to a list nobody reads instead of PUBLISHing it.
        task_routes={SWEEP_TASK: {"queue": BROADCAST, "exchange": BROADCAST,
                                  "routing_key": BROADCAST,
                                  "declare": [Exchange(BROADCAST, type="fanout")]}},
        task_create_missing_queues=True,
        # A guard holds a task for a long time (lock waits, start windows): no hoarding.
        worker_prefetch_multiplier=1,
        # Requests survive a guard's death: a request is acked when it has finished, so
        # one in flight when its guard dies is redelivered visibility_timeout after it
        # was taken (converge is idempotent; at the latest redelivered_within, even when
        # a guard died holding kombu's scan mutex); one that expired meanwhile is answered
        # REVOKED. Sweeps are not redelivered: the next guard sweeps at start anyway.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_annotations={SWEEP_TASK: {"acks_late": False}},
        # Never deaf: socket timeouts, keepalive and health checks on every connection
        # (connect.SOCKET_OPTIONS), and reconnect for ever. (broker_heartbeat is AMQP only.)
        # retry_on_timeout: a pooled broker connection that died silently is replaced at
        # once; without it the write that records a just-popped message times out and
        # the message is lost (measured with tests/blackhole.py).
        **result_backend_settings(url),
        broker_transport_options={**socket_options(url), "retry_on_timeout": True,
                                  "visibility_timeout": visibility_timeout(config),
                                  "unacked_restore_interval": RESTORE_INTERVAL,
                                  "unacked_restore_throttle": 1,
                                  "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE,
                                  **sentinel_options(url, settings)},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # A Redis error reply while (re)connecting is retried too: a primary just promoted
        # by Sentinel refuses writes (NOREPLICAS) until its replicas attach, and kombu's
        # restore of unacked requests then killed the guard ("Unrecoverable error").
        broker_channel_error_retry=True,
        # ... with pauses of at most 5 s between rounds, not kombu's 30 s (tasks/reconnect.py)
        worker_consumer=reconnect.CONSUMER,
        result_backend_transport_options=result_transport_options(url, settings),
        beat_schedule={
            "workerguard-sweep": {
                "task": SWEEP_TASK,
                "schedule": settings.sweep_interval,
                # A sweep that waited longer than one interval is replaced by the next.
                "options": {"expires": settings.sweep_interval},
            }
        },
    )
    broker_watch.install(app)
    # Never in app.conf: inspect and Flower publish it (see tasks/context.py).
    context.attach(app, context.Runtime(config, redis_url))
    from workerguard.tasks.handlers import register

    register(app)
    return app
