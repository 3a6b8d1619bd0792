"""Send ceilometer samples over the message bus exactly as ``ceilometer-polling`` does.

Reads a JSON list of samples on stdin (name, type, unit, volume, resource_id and
optionally user_id, project_id, timestamp, resource_metadata) and publishes them
with the polling agent's own notifier: driver ``[publisher_notifier]
telemetry_driver``, publisher id ``ceilometer.polling``, event type
``telemetry.polling``, payload ``{"samples": [meter messages]}`` signed with
``[publisher] telemetry_secret`` (ceilometer/polling/manager.py).

    python push_samples.py --config-file ceilometer.conf < samples.json

Stands in for the polling agent until the stack is fed by a real one.
"""

from __future__ import annotations

import json
import sys

import oslo_messaging
from ceilometer import messaging, sample, service
from ceilometer.publisher import utils as publisher_utils


def main(argv: list[str]) -> int:
    conf = service.prepare_service(argv)
    items = json.load(sys.stdin)
    samples = [sample.Sample(
        name=item["name"], type=item["type"], unit=item["unit"], volume=item["volume"],
        user_id=item.get("user_id"), project_id=item.get("project_id"),
        resource_id=item["resource_id"], timestamp=item.get("timestamp"),
        resource_metadata=item.get("resource_metadata") or {}) for item in items]
    transport = messaging.get_transport(conf)
    notifier = oslo_messaging.Notifier(
        transport, driver=conf.publisher_notifier.telemetry_driver,
        publisher_id="ceilometer.polling")
    messages = [publisher_utils.meter_message_from_counter(s, conf.publisher.telemetry_secret)
                for s in samples]
    notifier.sample({}, "telemetry.polling", {"samples": messages})
    transport.cleanup()
    print(f"pushed {len(messages)} samples", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
