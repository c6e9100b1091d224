"""Another service: it has Celery and the broker URL, and nothing of workerguard.

usage: celery_client.py BROKER_URL QUEUE COUNT PROFILE
Prints one JSON line: the state and result (or error) of each request.
"""

import json
import sys

from celery import Celery


def main() -> None:
    url, queue, count, profile = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    app = Celery(broker=url, backend=url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_accept_content=["json"])
    requests = [app.send_task("workerguard.ensure", args=[profile], queue=queue, expires=120)
                for _ in range(count)]
    answers = []
    for request in requests:
        value = request.get(timeout=180, propagate=False)
        answers.append({"state": request.state,
                        "result": value if isinstance(value, dict) else repr(value)})
    assert not any(name.startswith("workerguard") for name in sys.modules), "imported workerguard"
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
