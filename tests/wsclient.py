"""A small synchronous WebSocket client for the bridge tests.

python3-websockets 10.4 (Debian 12) only has an asyncio API, so every client
runs on one shared event loop in a background thread and the test calls
block on futures with a timeout. The library keeps reading frames in the
background (answering pings, queueing messages), so a client that the test
does not read from for a while is not a slow client; for a client that
really never reads, see RawClient.

Negative assertions ("B never arrived") must come after a positive barrier
(a message that was sent after B's would have been): expect_no_message only
waits a short quiet window, which proves nothing on its own.
"""

import asyncio
import base64
import json
import os
import socket
import struct
import threading
import time

import websockets
import websockets.exceptions

DEFAULT_TIMEOUT = 20.0  # positive waits: generous, a loaded 2-core machine

_loop = None
_loop_lock = threading.Lock()


def _event_loop():
    """The background event loop shared by every client, started on first use."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_loop.run_forever, name="wsclient-loop", daemon=True)
            thread.start()
        return _loop


def _run(coroutine, timeout):
    """Runs coroutine on the shared loop and waits for it at most timeout seconds."""
    future = asyncio.run_coroutine_threadsafe(coroutine, _event_loop())
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise


class Closed(Exception):
    """The connection closed while a message was expected."""

    def __init__(self, code, reason):
        super().__init__(f"connection closed with {code} {reason!r}")
        self.code = code
        self.reason = reason


class HandshakeRejected(Exception):
    """The server refused the WebSocket upgrade with an HTTP status."""

    def __init__(self, status, headers=None):
        super().__init__(f"handshake rejected with HTTP {status}")
        self.status = status
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}


class WSClient:
    """One WebSocket connection. Use as a context manager or call close()."""

    def __init__(self, url, headers=None, origin=None, timeout=DEFAULT_TIMEOUT, max_size=2**24,
                 ssl_context=None):
        self.url = url
        self.received = []  # every JSON message returned so far, for failure messages

        async def connect():
            return await websockets.connect(url, extra_headers=headers or {}, origin=origin,
                                            max_size=max_size, max_queue=None, compression=None,
                                            open_timeout=timeout, close_timeout=5,
                                            ping_interval=None, ssl=ssl_context)
        try:
            self.ws = _run(connect(), timeout + 1)
        except websockets.exceptions.InvalidStatusCode as e:
            raise HandshakeRejected(e.status_code, getattr(e, "headers", None)) from None

    # -- sending --------------------------------------------------------------

    def send_json(self, message):
        self.send_raw(json.dumps(message))

    def send_raw(self, data):
        """Sends one frame: text for str, binary for bytes; Closed if the socket is closed."""
        try:
            _run(self.ws.send(data), 10)
        except websockets.exceptions.ConnectionClosed:
            raise Closed(self.ws.close_code, self.ws.close_reason) from None

    def subscribe(self, subscription_id, patient_ids, resource_types=None, since=None,
                  timeout=DEFAULT_TIMEOUT):
        """Subscribes and returns the `subscription` answer (raises on anything else)."""
        data = {"subscription_id": subscription_id, "patient_ids": list(patient_ids),
                "resource_types": list(resource_types or [])}
        if since is not None:
            data["since"] = since
        self.send_json({"type": "subscribe", "data": data})
        answer = self.recv_json(timeout)
        assert answer.get("type") == "subscription", answer
        assert answer["data"]["action"] == "created", answer
        assert answer["data"]["subscription_id"] == subscription_id, answer
        return answer

    def unsubscribe(self, subscription_id, timeout=DEFAULT_TIMEOUT):
        self.send_json({"type": "unsubscribe", "data": {"subscription_id": subscription_id}})
        answer = self.recv_json(timeout)
        assert answer == {"type": "subscription",
                          "data": {"action": "removed", "subscription_id": subscription_id}} \
            or (answer.get("type") == "subscription" and answer["data"]["action"] == "removed"
                and answer["data"]["subscription_id"] == subscription_id), answer
        return answer

    def ping(self, timeout=DEFAULT_TIMEOUT):
        """Sends a ping and returns the next message, which must be its pong."""
        self.send_json({"type": "ping"})
        answer = self.recv_json(timeout)
        assert answer.get("type") == "pong", answer
        return answer

    # -- receiving ------------------------------------------------------------

    def recv_json(self, timeout=DEFAULT_TIMEOUT):
        """The next message as JSON; TimeoutError if none comes, Closed if the socket closes."""
        try:
            frame = _run(self.ws.recv(), timeout)
        except websockets.exceptions.ConnectionClosed:
            raise Closed(self.ws.close_code, self.ws.close_reason) from None
        assert isinstance(frame, str), f"binary frame from the server: {frame[:80]!r}"
        message = json.loads(frame)
        self.received.append(message)
        return message

    def recv_update(self, timeout=DEFAULT_TIMEOUT):
        """The next message, which must be an update."""
        message = self.recv_json(timeout)
        assert message.get("type") == "update", message
        return message

    def recv_caught_up(self, subscription_id, replayed=None, cursor=None, timeout=DEFAULT_TIMEOUT):
        """The next message, which must be the caught_up ending subscription_id's replay
        (with replayed updates and that cursor, when given)."""
        message = self.recv_json(timeout)
        assert message.get("type") == "caught_up", message
        assert message["data"]["subscription_id"] == subscription_id, message
        assert isinstance(message["data"]["cursor"], str), message
        if replayed is not None:
            assert message["data"]["replayed"] == replayed, message
        if cursor is not None:
            assert message["data"]["cursor"] == cursor, message
        return message

    def recv_updates(self, count, timeout=DEFAULT_TIMEOUT):
        """The next count messages, which must all be updates."""
        return [self.recv_update(timeout) for _ in range(count)]

    def expect_no_message(self, within=0.5):
        """Asserts nothing arrives within a short quiet window (only meaningful after a barrier)."""
        try:
            message = self.recv_json(within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message: {message}")

    def wait_closed(self, timeout=DEFAULT_TIMEOUT):
        """Reads until the server closes; returns (code, reason, messages read meanwhile)."""
        messages = []
        while True:
            try:
                messages.append(self.recv_json(timeout))
            except Closed as closed:
                return closed.code, closed.reason, messages

    @property
    def open(self):
        return self.ws.open

    def close(self):
        try:
            _run(self.ws.close(), 10)
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RawClient:
    """A WebSocket client on a plain socket, for what a real client library will not do:
    never reading (a stuck client), or sending frames the library refuses."""

    def __init__(self, host, port, path, headers=None, receive_buffer=None, timeout=10):
        self.sock = socket.socket()
        if receive_buffer:
            # A small receive window makes the server's sends back up quickly.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(1)  # byte by byte: leave any frame after the headers unread
            if not chunk:
                raise ConnectionError(f"closed during handshake: {response!r}")
            response += chunk
        self._buffer = b""
        self._fragments = None
        self.status = int(response.split(b" ", 2)[1])
        if self.status != 101:
            raise HandshakeRejected(self.status)

    def send_frame(self, payload, opcode=0x1, fin=True):
        """Sends one masked frame (0x1 text, 0x2 binary, 0x0 continuation; fin=False for
        all but the last fragment of a message)."""
        if isinstance(payload, str):
            payload = payload.encode()
        header = bytes([(0x80 if fin else 0) | opcode])
        length = len(payload)
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        mask = os.urandom(4)
        repeated = (mask * (length // 4 + 1))[:length]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
        self.sock.sendall(header + mask + masked)

    def send_json(self, message):
        self.send_frame(json.dumps(message))

    def read_frames(self, timeout=DEFAULT_TIMEOUT, idle=3.0, max_messages=None):
        """Reads the server's frames until it closes (a close frame or EOF), nothing
        comes for idle seconds, timeout passes, or max_messages frames arrived. Returns
        [(opcode, payload bytes)], fragmented messages joined; text is opcode 1, close 8
        (payload: code + reason). Bytes of a frame not yet complete are kept for the next call."""
        deadline = time.monotonic() + timeout
        frames = []
        while time.monotonic() < deadline:
            while True:
                frame, self._buffer = _parse_frame(self._buffer)
                if frame is None:
                    break
                fin, opcode, payload = frame
                if opcode == 0 and self._fragments is not None:
                    self._fragments[1] += payload
                    if fin:
                        frames.append(tuple(self._fragments))
                        self._fragments = None
                elif opcode in (1, 2) and not fin:
                    self._fragments = [opcode, payload]
                else:
                    frames.append((opcode, payload))
                    if opcode == 8:
                        return frames
                if max_messages is not None and len(frames) >= max_messages:
                    return frames
            self.sock.settimeout(min(idle, max(0.1, deadline - time.monotonic())))
            try:
                chunk = self.sock.recv(1 << 16)
            except (socket.timeout, ConnectionError):
                break
            if not chunk:
                break
            self._buffer += chunk
        return frames

    def read_messages(self, count, timeout=DEFAULT_TIMEOUT):
        """Reads until count text messages (as JSON) arrived; fewer if the server closes."""
        messages = []
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            frames = self.read_frames(timeout=deadline - time.monotonic(), idle=deadline - time.monotonic(),
                                      max_messages=count - len(messages))
            if not frames:
                break
            messages += [json.loads(payload) for opcode, payload in frames if opcode == 1]
            if any(opcode == 8 for opcode, _ in frames):
                break
        return messages

    def close(self):
        self.sock.close()


def _parse_frame(buffer):
    """((fin, opcode, payload), rest) of the first unmasked frame in buffer, or (None, buffer)."""
    if len(buffer) < 2:
        return None, buffer
    fin = bool(buffer[0] & 0x80)
    opcode = buffer[0] & 0x0F
    length = buffer[1] & 0x7F
    offset = 2
    if length == 126:
        if len(buffer) < 4:
            return None, buffer
        length = struct.unpack("!H", buffer[2:4])[0]
        offset = 4
    elif length == 127:
        if len(buffer) < 10:
            return None, buffer
        length = struct.unpack("!Q", buffer[2:10])[0]
        offset = 10
    if buffer[1] & 0x80:
        offset += 4  # a masked frame from a server is a protocol error; skip the mask anyway
    if len(buffer) < offset + length:
        return None, buffer
    return (fin, opcode, buffer[offset:offset + length]), buffer[offset + length:]
