#!/usr/bin/env python3
"""Read the registry's RabbitMQ stream with rstream, asking the broker for some routing keys only.

    pip install rstream==1.1.1
    python3 stream_consumer.py --stream service-registry --routing-key service.added

Prints one JSON line per message: its stream offset, message id (= the change's seq),
subject (= routing key), application properties and body. Options:

  --host, --port, --user, --password, --vhost   the broker (default: guest@localhost:5552, /)
  --stream NAME        the registry's RABBITMQ_EXCHANGE (default: service-registry)
  --routing-key KEY    repeatable; none = every message
  --offset WHERE       first, last, next (default) or a stream offset
  --limit N            exit 0 after N messages
  --timeout SEC        exit 1 if --limit has not been reached by then
"""

import argparse
import asyncio
import json
import sys

from rstream import (
    AMQPMessage,
    Consumer,
    ConsumerOffsetSpecification,
    FilterConfiguration,
    MessageContext,
    OffsetType,
    amqp_decoder,
)


def text(value):
    """AMQP strings arrive as bytes or str depending on the field; show them as str."""
    return value.decode() if isinstance(value, bytes) else value


def describe(message: AMQPMessage, context: MessageContext) -> dict:
    properties = message.properties
    body = message.body
    if isinstance(body, list):  # a body in several data sections
        body = b"".join(body)
    return {
        "offset": context.offset,
        "message_id": properties.message_id if properties else None,
        "subject": text(properties.subject) if properties else None,
        "application_properties": {
            text(k): text(v) for k, v in (message.application_properties or {}).items()
        },
        "body": json.loads(body),
    }


def offset_spec(where: str) -> ConsumerOffsetSpecification:
    named = {"first": OffsetType.FIRST, "last": OffsetType.LAST, "next": OffsetType.NEXT}
    if where in named:
        return ConsumerOffsetSpecification(named[where], None)
    return ConsumerOffsetSpecification(OffsetType.OFFSET, int(where))


async def consume(args) -> int:
    done = asyncio.Event()
    seen = 0

    async def on_message(message: AMQPMessage, context: MessageContext):
        nonlocal seen
        if args.limit is not None and seen >= args.limit:
            return
        print(json.dumps(describe(message, context)), flush=True)
        seen += 1
        if args.limit is not None and seen >= args.limit:
            done.set()

    keys = args.routing_key or []
    # The broker filters by chunk, so a delivered chunk may hold other keys: the predicate
    # keeps only messages whose subject (the routing key) was asked for.
    filter_input = (
        FilterConfiguration(
            values_to_filter=keys,
            predicate=lambda m: text(m.properties.subject) in keys,
            match_unfiltered=False,
        )
        if keys
        else None
    )
    async with Consumer(
        host=args.host,
        port=args.port,
        username=args.user,
        password=args.password,
        vhost=args.vhost,
    ) as consumer:
        await consumer.start()
        await consumer.subscribe(
            stream=args.stream,
            callback=on_message,
            decoder=amqp_decoder,
            offset_specification=offset_spec(args.offset),
            filter_input=filter_input,
        )
        try:
            await asyncio.wait_for(done.wait(), timeout=args.timeout)
        except asyncio.TimeoutError:
            print(f"{seen} of {args.limit} messages within {args.timeout} s", file=sys.stderr)
            return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=5552)
    parser.add_argument("--user", default="guest")
    parser.add_argument("--password", default="guest")
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--stream", default="service-registry")
    parser.add_argument("--routing-key", action="append")
    parser.add_argument("--offset", default="next")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--timeout", type=float)
    args = parser.parse_args()
    try:
        return asyncio.run(consume(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
