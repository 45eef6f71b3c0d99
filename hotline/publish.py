"""A QoS 1 command publisher for the API process: the ``Publisher`` the claim endpoint calls after commit.

Set it on the app (``app.state.cmd_publisher = CommandPublisher(settings.mqtt_url, ...).start()``); paho
queues and retries QoS 1 messages while it reconnects, so a broker blip delays the message but never
blocks or fails a claim.
"""

from __future__ import annotations

import logging
import time
import uuid

import paho.mqtt.client as mqtt

from carewatch.mqtt import make_client

log = logging.getLogger(__name__)


class CommandPublisher:
    def __init__(self, url: str, client_id_prefix: str = "carewatch", ca_file: str | None = None) -> None:
        self.client, self._props, self._target = make_client(
            url, f"{client_id_prefix}-cmd-{uuid.uuid4().hex[:8]}", ca_file=ca_file
        )

    def start(self, wait_s: float = 5.0) -> CommandPublisher:
        """Connect in the background; wait up to ``wait_s`` for the first connection (not required)."""
        self.client.connect_async(self._target.host, self._target.port, properties=self._props)
        self.client.loop_start()
        deadline = time.monotonic() + wait_s
        while not self.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __call__(self, topic: str, payload: bytes, qos: int) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        # NO_CONN: paho keeps the QoS 1 message and sends it on reconnect.
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise ConnectionError(f"publish to {topic} not queued (rc={info.rc})")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
