#!/usr/bin/env python3
"""A raw HTTP/2 client for the `hostile` end-to-end tests: it sends what a well-behaved
gRPC library never would (a call after execve, HPACK bombs, endless CONTINUATION frames)
and prints one line saying what the agent answered.

    raw_h2.py call SOCKET SPIFFE_ID                 # control: a plain FetchX509SVID
    raw_h2.py exec-after-connect SOCKET SPIFFE_ID TARGET
    raw_h2.py hpack-bomb SOCKET
    raw_h2.py table-size-update SOCKET
    raw_h2.py empty-continuations SOCKET
    raw_h2.py hold SOCKET N                         # N idle connections until killed
    raw_h2.py https-get HOST PORT CAFILE            # the bundle endpoint's document

Output: SERVED / REFUSED <why> / CLOSED <why> / HELD <n> / STATUS <code> <bytes>.
Standard library only.
"""

import os
import socket
import ssl
import struct
import sys
import time

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
MAX_FRAME = 16384


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def integer(value, prefix_bits, first_byte_flags=0):
    """An HPACK integer (RFC 7541, 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = bytearray([first_byte_flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name, value, indexing=False):
    """A literal header field with a new name, without Huffman coding."""
    first = 0x40 if indexing else 0x00
    return bytes([first]) + integer(len(name), 7) + name + integer(len(value), 7) + value


def request_headers():
    return b"".join(
        literal(n, v)
        for n, v in [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"workload.spiffe.io", b"true"),
        ]
    )


def header_frames(stream, block, end_stream=False):
    """HEADERS and as many CONTINUATION frames as `block` needs."""
    chunks = [block[i : i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)] or [b""]
    out = []
    for i, chunk in enumerate(chunks):
        flags = END_HEADERS if i == len(chunks) - 1 else 0
        if i == 0:
            out.append(frame(HEADERS, flags | (END_STREAM if end_stream else 0), stream, chunk))
        else:
            out.append(frame(CONTINUATION, flags, stream, chunk))
    return b"".join(out)


class Conn:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(15)
        self.sock.connect(path)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def read_frame(self):
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        length = int.from_bytes(self.buf[:3], "big")
        kind, flags = self.buf[3], self.buf[4]
        stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload = self.buf[9 : 9 + length]
        self.buf = self.buf[9 + length :]
        if kind == SETTINGS and not flags & ACK:
            self.send(frame(SETTINGS, ACK, 0))
        if kind == PING and not flags & ACK:
            self.send(frame(PING, ACK, 0, payload))
        return kind, flags, stream, payload

    def handshake(self):
        """The preface and SETTINGS both ways: once this returns, the agent has accepted
        the connection (and noted the caller)."""
        self.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0))
        while True:
            got = self.read_frame()
            if got is None:
                raise SystemExit("CLOSED before SETTINGS")
            if got[0] == SETTINGS and not got[1] & ACK:
                return

    def outcome(self, spiffe_id=None):
        """Reads until the call is answered; one line saying how."""
        data = b""
        try:
            while True:
                got = self.read_frame()
                if got is None:
                    return "CLOSED eof"
                kind, flags, _, payload = got
                if kind == DATA:
                    data += payload
                    if spiffe_id and spiffe_id in data:
                        return "SERVED"
                elif kind == HEADERS and flags & END_STREAM:
                    return "REFUSED trailers"
                elif kind == RST_STREAM:
                    return "REFUSED rst_stream %d" % int.from_bytes(payload[:4], "big")
                elif kind == GOAWAY:
                    return "CLOSED goaway %d" % int.from_bytes(payload[4:8], "big")
        except socket.timeout:
            return "TIMEOUT"
        except OSError as error:
            return "CLOSED %s" % error.__class__.__name__

    def call(self, stream=1):
        self.send(header_frames(stream, request_headers()))
        self.send(frame(DATA, END_STREAM, stream, b"\x00\x00\x00\x00\x00"))


def exec_after_connect(path, spiffe_id, target):
    conn = Conn(path)
    conn.handshake()
    parent = os.getpid()
    if os.fork() != 0:
        # The connecting process becomes `target`; the connection lives on in the child.
        os.execv(target, [target, "30"])
    deadline = time.time() + 10
    while os.path.realpath("/proc/%d/exe" % parent) != os.path.realpath(target):
        if time.time() > deadline:
            print("TIMEOUT waiting for execve", flush=True)
            os._exit(1)
        time.sleep(0.01)
    conn.call()
    print(conn.outcome(spiffe_id), flush=True)
    os.kill(parent, 15)
    os._exit(0)


def send_and_see(path, data):
    conn = Conn(path)
    conn.handshake()
    try:
        conn.send(data)
    except OSError as error:
        return "CLOSED while sending (%s)" % error.__class__.__name__
    return conn.outcome()


def hpack_bomb():
    """One 4000-byte header in the dynamic table, then ~60,000 one-byte references to it:
    a 64 KiB block that decodes to ~240 MB."""
    block = request_headers() + literal(b"x-bomb", b"a" * 4000, indexing=True)
    block += b"\xbe" * (64 * 1024 - len(block))
    return header_frames(1, block)


def table_size_update():
    """A dynamic table size update to 1 MiB, then headers to fill it."""
    block = integer(1 << 20, 5, 0x20) + request_headers()
    for i in range(15):
        block += literal(b"x-fill-%d" % i, b"b" * 4000, indexing=True)
    return header_frames(1, block)


def empty_continuations():
    """HEADERS without END_HEADERS, then 100,000 empty CONTINUATION frames."""
    return frame(HEADERS, 0, 1, request_headers()) + frame(CONTINUATION, 0, 1) * 100_000


def hold(path, n):
    held = []
    for _ in range(n):
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            held.append(s)
        except OSError:
            break
    print("HELD %d" % len(held), flush=True)
    time.sleep(600)


def https_get(host, port, cafile):
    import http.client

    context = ssl.create_default_context(cafile=cafile)
    # An `https_spiffe` endpoint's certificate names a SPIFFE ID, not a host.
    context.check_hostname = False
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    connection.request("GET", "/")
    response = connection.getresponse()
    body = response.read()
    print("STATUS %d %d" % (response.status, len(body)), flush=True)


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "call":
        conn = Conn(args[0])
        conn.handshake()
        conn.call()
        print(conn.outcome(args[1].encode()), flush=True)
    elif command == "exec-after-connect":
        exec_after_connect(args[0], args[1].encode(), args[2])
    elif command == "hpack-bomb":
        print(send_and_see(args[0], hpack_bomb()), flush=True)
    elif command == "table-size-update":
        print(send_and_see(args[0], table_size_update()), flush=True)
    elif command == "empty-continuations":
        print(send_and_see(args[0], empty_continuations()), flush=True)
    elif command == "hold":
        hold(args[0], int(args[1]))
    elif command == "https-get":
        https_get(*args)
    else:
        raise SystemExit("unknown command %r" % command)


if __name__ == "__main__":
    main()
