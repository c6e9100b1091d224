"""``redis.asyncio`` is loaded on first use in the ``workerguard`` command
(``workerguard.cli.deferred_imports``), and works as before once used. Each case runs in a
fresh interpreter: this one has imported redis-py long ago."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support import cli_env


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=cli_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_command_and_the_guard_worker_modules_leave_redis_asyncio_unloaded():
    out = _run("""
        import inspect, sys
        import workerguard.cli, workerguard.tasks.app, workerguard.ops.runners, celery.apps.worker
        from workerguard.config.load import Config
        inspect.getmodule(Config)  # what pydantic's attribute docstrings run: scans sys.modules
        print(sorted(m for m in sys.modules if m.startswith("redis.asyncio.")
                     and "observability" not in m))
    """)
    assert out == "[]"


def test_redis_asyncio_works_once_used_from_several_threads_at_once():
    out = _run("""
        import sys, threading
        import workerguard.cli
        import redis, redis.asyncio as deferred
        found = []
        def use():
            from redis.asyncio import Redis
            found.append(Redis)
        threads = [threading.Thread(target=use) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        from redis.asyncio.client import Redis
        assert found == [Redis] * 8, found
        assert redis.asyncio.StrictRedis is Redis and deferred.Sentinel.__module__ == "redis.asyncio.sentinel"
        try:
            deferred.no_such_name
        except AttributeError:
            print("ok")
    """)
    assert out == "ok"


def test_nothing_is_deferred_once_redis_is_imported():
    out = _run("""
        import redis
        from workerguard.cli.deferred_imports import defer_redis_asyncio
        print(defer_redis_asyncio(), type(redis.asyncio).__name__)
    """)
    assert out == "False module"
