"""Centrifugo's Python SDKs (PyPI, pinned in requirements.txt) against a gateway:
centrifuge-python at `/connection/websocket` (connect with a token, subscribe, publish, recover
what was published while the client was away), and the backend library `cent` at
`/centrifugo/api` (publish, broadcast, presence, history, channels, info, disconnect, batch).

Run by ./scripts/test in a virtual environment; by hand, after `cargo build -p gateway`:
    python3 -m venv /tmp/sdk && /tmp/sdk/bin/pip install -r tests/sdk/requirements.txt
    GATEWAY_BIN=target/debug/gateway /tmp/sdk/bin/python -m unittest -v tests/sdk/test_centrifuge_python.py
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

import cent
from centrifuge import (
    Client,
    ClientEventHandler,
    DisconnectedContext,
    PublicationContext,
    SubscribedContext,
    SubscriptionEventHandler,
)

WAIT = 20.0
SECRET = secrets.token_hex(32)
API_KEY = "sdk-test-" + secrets.token_hex(8)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GATEWAY_BIN = os.environ.get("GATEWAY_BIN") or os.path.join(REPO, "target/debug/gateway")


def token(sub, secs=3600):
    """An HS256 JWT for `sub`, valid for `secs` seconds."""

    def b64(v):
        return base64.urlsafe_b64encode(json.dumps(v).encode()).rstrip(b"=").decode()

    body = b64({"alg": "HS256", "typ": "JWT"}) + "." + b64({"sub": sub, "exp": int(time.time()) + secs})
    sig = hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).digest()
    return body + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


class Gateway:
    """A gateway process on a free port; its stderr kept, and checked for panics."""

    def __init__(self):
        self.data_dir = tempfile.mkdtemp(prefix="sdk-gw-")
        self.proc = subprocess.Popen(
            [GATEWAY_BIN, "--listen", "127.0.0.1:0", "--log-format", "json", "--jwt-secret", SECRET,
             "--api-key", API_KEY, "--data-dir", self.data_dir],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        self.addr = None
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                try:
                    fields = json.loads(line).get("fields", {})
                except ValueError:
                    continue
                if fields.get("message") == "listening":
                    self.addr = fields.get("addr")
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(20):
            self.proc.kill()
            raise RuntimeError("gateway did not listen within 20 s:\n" + "\n".join(self.log))

    def publish(self, channel, data):
        """Publishes through the HTTP API; returns the offset."""
        request = urllib.request.Request(
            f"http://{self.addr}/api/publish", method="POST",
            data=json.dumps({"channel": channel, "data": data}).encode(),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["offset"]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        panics = [line for line in self.log if "panicked" in line]
        assert not panics, panics


class Recorder(SubscriptionEventHandler):
    """Keeps every publication and subscribed event of a subscription."""

    def __init__(self):
        self.pubs = []
        self.subscribed = []

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.pubs.append(ctx.pub)

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.append(ctx)


async def eventually(what, check):
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.02)


class CentrifugePythonTest(unittest.IsolatedAsyncioTestCase):
    def setUp(self):
        self.gw = Gateway()

    def tearDown(self):
        self.gw.stop()

    async def test_subscribe_publish_and_recover(self):
        channel = "room:py-" + secrets.token_hex(4)
        client = Client(f"ws://{self.gw.addr}/connection/websocket", token=token("alice"))
        events = Recorder()
        sub = client.new_subscription(channel, events=events)
        await client.connect()
        await sub.subscribe()
        await eventually("subscribed", lambda: len(events.subscribed) == 1)
        self.assertTrue(events.subscribed[0].recoverable)
        await sub.publish({"text": "from python"})
        await eventually("own publication", lambda: len(events.pubs) == 1)
        self.assertEqual(events.pubs[0].data, {"text": "from python"})
        self.assertEqual(events.pubs[0].info.user, "alice")
        # Away while a backend publishes three messages; back, they are recovered.
        await client.disconnect()
        offsets = [self.gw.publish(channel, {"i": i}) for i in range(3)]
        await client.connect()
        await eventually("resubscribed", lambda: len(events.subscribed) == 2)
        again = events.subscribed[1]
        self.assertTrue(again.was_recovering)
        self.assertTrue(again.recovered)
        await eventually("recovered publications", lambda: len(events.pubs) == 4)
        self.assertEqual([p.offset for p in events.pubs[1:]], offsets)
        self.assertEqual([p.offset for p in events.pubs], list(range(events.pubs[0].offset, events.pubs[0].offset + 4)))
        history = await sub.history(limit=10)
        self.assertEqual([p.offset for p in history.publications], [p.offset for p in events.pubs])
        await client.disconnect()


class Disconnections(ClientEventHandler):
    """Keeps every disconnect of a client."""

    def __init__(self):
        self.seen = []

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.seen.append(ctx)


class CentBackendTest(unittest.IsolatedAsyncioTestCase):
    def setUp(self):
        self.gw = Gateway()
        self.api = cent.Client(f"http://{self.gw.addr}/centrifugo/api", API_KEY)

    def tearDown(self):
        self.api.close()
        self.gw.stop()

    async def test_the_backend_library_publishes_reads_and_disconnects(self):
        channel = "room:cent-" + secrets.token_hex(4)
        other = "room:cent-other-" + secrets.token_hex(4)
        disconnects = Disconnections()
        client = Client(f"ws://{self.gw.addr}/connection/websocket", token=token("alice"),
                        events=disconnects)
        events = Recorder()
        sub = client.new_subscription(channel, events=events)
        await client.connect()
        await sub.subscribe()
        await eventually("subscribed", lambda: len(events.subscribed) == 1)

        published = await asyncio.to_thread(
            self.api.publish, cent.PublishRequest(channel=channel, data={"text": "from cent"}))
        self.assertGreater(published.offset, 0)
        self.assertTrue(published.epoch)
        await eventually("the publication", lambda: len(events.pubs) == 1)
        self.assertEqual(events.pubs[0].data, {"text": "from cent"})
        self.assertEqual(events.pubs[0].offset, published.offset)

        broadcast = await asyncio.to_thread(
            self.api.broadcast, cent.BroadcastRequest(channels=[channel, other], data={"n": 2}))
        self.assertEqual(len(broadcast.responses), 2)
        self.assertTrue(all(r.error is None for r in broadcast.responses))
        await eventually("the broadcast", lambda: len(events.pubs) == 2)

        presence = await asyncio.to_thread(self.api.presence, cent.PresenceRequest(channel=channel))
        self.assertEqual([c.user for c in presence.presence.values()], ["alice"])
        stats = await asyncio.to_thread(
            self.api.presence_stats, cent.PresenceStatsRequest(channel=channel))
        self.assertEqual((stats.num_users, stats.num_clients), (1, 1))

        history = await asyncio.to_thread(
            self.api.history, cent.HistoryRequest(channel=channel, limit=10))
        self.assertEqual([p.offset for p in history.publications], [p.offset for p in events.pubs])
        self.assertEqual(history.epoch, published.epoch)

        channels = await asyncio.to_thread(self.api.channels, cent.ChannelsRequest())
        self.assertIn(channel, channels.channels)
        info = await asyncio.to_thread(self.api.info, cent.InfoRequest())
        self.assertEqual(len(info.nodes), 1)
        self.assertEqual(info.nodes[0].num_clients, 1)

        batch = await asyncio.to_thread(self.api.batch, cent.BatchRequest(requests=[
            cent.PublishRequest(channel=channel, data={"in": "batch"}),
            cent.PresenceStatsRequest(channel=channel),
        ]))
        self.assertEqual(len(batch.replies), 2)
        await eventually("the batch's publication", lambda: len(events.pubs) == 3)

        # A wrong key is refused.
        with self.assertRaises(cent.CentUnauthorizedError):
            bad = cent.Client(f"http://{self.gw.addr}/centrifugo/api", "wrong")
            await asyncio.to_thread(bad.info, cent.InfoRequest())

        # Disconnected by the backend, with Centrifugo's default: do not reconnect.
        await asyncio.to_thread(self.api.disconnect, cent.DisconnectRequest(user="alice"))
        await eventually("the disconnect", lambda: len(disconnects.seen) == 1)
        self.assertEqual(disconnects.seen[0].code, 3503)
        await client.disconnect()


if __name__ == "__main__":
    unittest.main()
