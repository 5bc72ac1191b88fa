"""Clients that break TLS or HTTP halfway through a request: what makes nginx log errors.

nginx appends the request line (the URL secret included) to every error
message about a request, at every level but debug, and a TLS record it cannot
read after the handshake is an `SSL_read() failed` at level `crit` for many
OpenSSL reasons (measured with Debian 12's nginx 1.22.1 and OpenSSL 3.0:
"packet length too long", "bad record type", a TLS 1.2 "bad record mac", even
when only half the request line has arrived). Each client here completes a
real handshake, sends part of a request for `path`, then misbehaves: resets,
hangs up without close_notify, or writes raw records the session cannot
decrypt. Python's `ssl` runs the handshake over memory buffers, so the raw
socket stays ours to write anything on.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

# Raw TLS records written after the handshake (type, version, length, payload).
TOO_LONG_RECORD = b"\x17\x03\x03\xff\xff" + bytes(512)  # over the 16 KiB + 256 limit
UNDECRYPTABLE_RECORD = b"\x17\x03\x03\x01\x00" + bytes(range(256))  # fails its MAC / AEAD tag
UNKNOWN_TYPE_RECORD = b"\x99\x03\x03\x00\x20" + bytes(32)
PLAINTEXT_ALERT = b"\x15\x03\x03\x00\x02\x02\x28"  # an unencrypted fatal alert mid-session
CHANGE_CIPHER_SPEC = b"\x14\x03\x03\x00\x01\x01"
BODY_LENGTH = 100_000


@dataclass
class TlsSession:
    """A TLS session whose records we encrypt ourselves and whose socket we may abuse."""

    sock: socket.socket
    tls: ssl.SSLObject
    outgoing: ssl.MemoryBIO
    incoming: ssl.MemoryBIO

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.sock.sendall(self.outgoing.read())

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), no TLS close_notify."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def hang_up(self) -> None:
        """A FIN without TLS close_notify, then wait a little for nginx to read it."""
        self.sock.shutdown(socket.SHUT_WR)
        self.linger_and_close()

    def raw(self, data: bytes) -> None:
        """Bytes on the wire outside the TLS session, then close."""
        self.sock.sendall(data)
        self.linger_and_close()

    def linger_and_close(self, seconds: float = 0.3) -> None:
        self.sock.settimeout(seconds)
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and self.sock.recv(65536):
                pass
        except OSError:
            pass
        self.sock.close()


def connect(address: str, port: int, version: ssl.TLSVersion, timeout_s: float = 10.0) -> TlsSession:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version
    sock = socket.create_connection((address, port), timeout=timeout_s)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    while not handshake_done(tls):
        if outgoing.pending:
            sock.sendall(outgoing.read())
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"{address}:{port} closed the connection during the TLS handshake")
        incoming.write(data)
    if outgoing.pending:
        sock.sendall(outgoing.read())
    return TlsSession(sock, tls, outgoing, incoming)


def handshake_done(tls: ssl.SSLObject) -> bool:
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


def request_head(method: str, path: str, body_length: int | None = None, extra: str = "") -> bytes:
    length = "" if body_length is None else f"Content-Length: {body_length}\r\n"
    head = f"{method} {path} HTTP/1.1\r\nHost: synthdet\r\nContent-Type: image/jpg\r\n{length}{extra}\r\n"
    return head.encode()


def half_a_body(session: TlsSession, path: str) -> TlsSession:
    session.send(request_head("POST", path, BODY_LENGTH) + b"\xff\xd8\xff\xe0" + bytes(5000))
    return session


# name -> what the client does after the handshake, given the session and the request path.
Abuse = Callable[[TlsSession, str], None]
ABUSES: dict[str, Abuse] = {
    "half a body, then a TCP reset": lambda s, p: half_a_body(s, p).reset(),
    "half a body, then a hang-up without close_notify": lambda s, p: half_a_body(s, p).hang_up(),
    "half a body, then a record over the size limit": lambda s, p: half_a_body(s, p).raw(TOO_LONG_RECORD),
    "half a body, then a record that does not decrypt": lambda s, p: half_a_body(s, p).raw(
        UNDECRYPTABLE_RECORD
    ),
    "half a body, then a record of unknown type": lambda s, p: half_a_body(s, p).raw(UNKNOWN_TYPE_RECORD),
    "half a body, then a plaintext alert": lambda s, p: half_a_body(s, p).raw(PLAINTEXT_ALERT),
    "half a body, then a change-cipher-spec": lambda s, p: half_a_body(s, p).raw(CHANGE_CIPHER_SPEC),
    "half a request line, then garbage": lambda s, p: (s.send(f"POST {p}".encode()), s.raw(TOO_LONG_RECORD)),
    "headers only, then random bytes": lambda s, p: (
        s.send(request_head("POST", p, 10)),
        s.raw(os.urandom(64)),
    ),
    "pipelined GETs, reset before the answers": lambda s, p: (
        s.send(request_head("GET", p) * 20),
        s.reset(),
    ),
}


def abuse_all(address: str, port: int, path: str) -> dict[str, str]:
    """Every abuse over TLS 1.2 and 1.3: {case: "done" or the client-side error}."""
    outcome = {}
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        for name, abuse in ABUSES.items():
            key = f"{version.name}: {name}"
            try:
                abuse(connect(address, port, version), path)
                outcome[key] = "done"
            except OSError as exc:  # the server hung up first: fine, it still had to read it
                outcome[key] = f"client error: {exc}"
    return outcome


# Requests nginx refuses itself, logging why (info or error level) with the request line.
def malformed_requests(path: str) -> dict[str, bytes]:
    return {
        "invalid chunked body": request_head("POST", path, extra="Transfer-Encoding: chunked\r\n")
        + b"ZZZ\r\n",
        "Content-Length and Transfer-Encoding": request_head(
            "POST", path, 10, extra="Transfer-Encoding: chunked\r\n"
        )
        + b"0\r\n\r\n",
        "a URI over 8 KiB": request_head("GET", path + "?" + "a" * 9000),
        "an invalid method": request_head("P@ST", path, 4) + b"abcd",
        "a NUL in the URI": request_head("POST", path + "%00\x00x", 4) + b"abcd",
        "a body over the limit announced": request_head("POST", path, 50 * 1024 * 1024) + bytes(1000),
        "headers over the buffers": request_head("POST", path, 4, extra=f"X-Big: {'b' * 20000}\r\n")
        + b"abcd",
        "two Host headers": request_head("POST", path, 4, extra="Host: other\r\n") + b"abcd",
    }


def send_malformed(address: str, port: int, path: str) -> dict[str, str]:
    """Each malformed request on a TLS 1.3 connection of its own: {case: first line of the answer}."""
    answers = {}
    for name, raw in malformed_requests(path).items():
        session = connect(address, port, ssl.TLSVersion.TLSv1_3)
        try:
            session.send(raw)
            answers[name] = read_status_line(session)
        except OSError as exc:
            answers[name] = f"client error: {exc}"
        finally:
            session.sock.close()
    return answers


def read_status_line(session: TlsSession, timeout_s: float = 10.0) -> str:
    session.sock.settimeout(timeout_s)
    received = b""
    while b"\r\n" not in received:
        try:
            received += session.tls.read(4096)
            continue
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            break
        data = session.sock.recv(65536)
        if not data:
            break
        session.incoming.write(data)
    return received.split(b"\r\n", 1)[0].decode(errors="replace")
