#!/usr/bin/env python3
"""Follow the registry's event stream (server-sent events), standard library only.

    python3 sse_client.py http://localhost:5001 --service web --events 'service.*,metrics.*'

Prints one line per event: `<id> <event> <data>`. It keeps its own copy of the registered
services up to date, and on a dropped connection reconnects with Last-Event-ID, so no change
is lost or seen twice. Options:

  --service NAMES   only changes about these services (comma-separated)
  --events KEYS     only these routing keys (comma-separated; `service.*`, `*`, ...)
  --since ID        start after this event id instead of with a snapshot
  --until EVENT     exit 0 after the first EVENT (with --service: about one of those services)
  --timeout SEC     exit 1 if --until has not happened by then
"""

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def read_events(response):
    """Yield (id, event, data) for each event of an SSE response, as the SSE grammar defines."""
    event_id, event, data = None, "message", []
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line == "":
            if data:
                yield event_id, event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue  # a heartbeat comment
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            event_id = value
        elif field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "retry" and value.isdigit():
            read_events.retry_ms = int(value)


read_events.retry_ms = 2000


class Registry:
    """The client's own copy of the registered services, kept current by the events."""

    def __init__(self):
        self.services = {}

    def apply(self, event, body):
        if event in ("snapshot", "reset"):
            self.services = {s["name"]: s for s in body["services"]}
        elif event in ("service.added", "service.updated"):
            self.services[body["service"]["name"]] = body["service"]
        elif event == "service.removed":
            self.services.pop(body["service_name"], None)
        elif event == "services.updated":
            self.services = {s["name"]: s for s in body["services"]}


def concerns(body, names):
    """Whether an event body is about one of these services (any service if names is empty)."""
    if not names:
        return True
    name = body.get("service_name") or (body.get("service") or {}).get("name")
    return name in names


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the registry, e.g. http://localhost:5001")
    parser.add_argument("--service")
    parser.add_argument("--events")
    parser.add_argument("--since")
    parser.add_argument("--until")
    parser.add_argument("--timeout", type=float)
    args = parser.parse_args()

    query = {k: v for k, v in (("service", args.service), ("events", args.events)) if v}
    url = args.url.rstrip("/") + "/events/stream"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    names = set(filter(None, (args.service or "").split(",")))
    deadline = time.monotonic() + args.timeout if args.timeout else None
    last_id = args.since
    registry = Registry()

    while True:
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        request = urllib.request.Request(url, headers=headers)
        remaining = deadline - time.monotonic() if deadline else None
        if remaining is not None and remaining <= 0:
            print(f"no {args.until} within {args.timeout} s", file=sys.stderr)
            return 1
        try:
            # The socket timeout bounds each read; heartbeats arrive well within it.
            with urllib.request.urlopen(request, timeout=remaining or 60) as response:
                for event_id, event, data in read_events(response):
                    last_id = event_id or last_id
                    body = json.loads(data)
                    registry.apply(event, body)
                    print(event_id, event, data, flush=True)
                    if event == args.until and concerns(body, names):
                        return 0
                    if event == "shutdown":
                        break  # the server is stopping; reconnect after the retry pause
                    if deadline and time.monotonic() > deadline:
                        print(f"no {args.until} within {args.timeout} s", file=sys.stderr)
                        return 1
        except urllib.error.HTTPError as error:
            # 400: a bad filter or id. Retrying the same request cannot help.
            print(f"{error.code}: {error.read().decode()}", file=sys.stderr)
            return 2
        except (urllib.error.URLError, OSError) as error:
            print(f"connection lost ({error}); resuming after {last_id}", file=sys.stderr)
        time.sleep(read_events.retry_ms / 1000)


if __name__ == "__main__":
    sys.exit(main())
