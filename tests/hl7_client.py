"""For the intake tests: the guide's official example messages, a real MLLP client, and a listener run in a
thread of the test process (its own asyncio loop), on a free port of 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import threading
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent / "hl7_examples"  # vendored, see its README.md

MDM_INIT_PLACEHOLDER = "MDM/Transmission_initiale_MDM/message_MDM_CR_Radio_INIT_N1.er7"
MDM_INIT = "MDM/Transmission_initiale_MDM/message_MDM_CR_Radio_INIT_N1_Base64.er7"
MDM_RPLC = "MDM/Remplacement_MDM/message_MDM_CR_Radio_RPLC_N1.er7"
MDM_DEL = "MDM/Suppression_MDM/message_MDM_CR_Radio_DEL_N1.er7"
ORU_INIT = "ORU/Transmission_initiale_ORU/message_ORU_CR_Bio_INIT_N3_SEGUR.hl7"
ORU_RPLC = "ORU/Remplacement_ORU/message_ORU_CR_Bio_RPLC_N3_SEGUR.hl7"
ORU_DEL = "ORU/Suppression_ORU/message_ORU_CR_Bio_DEL_N3_SEGUR.hl7"


def example(name: str) -> bytes:
    """An example message as the guide ships it (LF between segments), with CR, as HL7 sends it."""
    return (EXAMPLES / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r")


def with_cda(message: bytes, change) -> bytes:
    """`message` with its document OBX's CDA changed by `change` (bytes -> bytes), base64 again."""
    out = []
    for segment in message.split(b"\r"):
        if segment.startswith(b"OBX|1|ED|"):
            fields = segment.split(b"|")
            components = fields[5].split(b"^")
            data = components[4] + b"=" * (-len(components[4]) % 4)
            components[4] = base64.b64encode(change(base64.b64decode(data)))
            fields[5] = b"^".join(components)
            segment = b"|".join(fields)
        out.append(segment)
    return b"\r".join(out)


MDM_SET_ID = b'<setId root="1.2.250.1.71.4.2.2.120456789.71024000080"/>'  # shared by the MDM CDA's versions


def corrected_cda(cda: bytes) -> bytes:
    """An example CDA as today's ANS schematron wants it: a setId (mandatory now; the MDM CDAs have none) and no
    family name of qualifier SP for the patient (only BR and CL now). Nothing else changes."""
    if b"<setId" not in cda:
        cda = re.sub(rb"(<versionNumber[^>]*/>)", MDM_SET_ID + rb"\1", cda, count=1)  # setId precedes versionNumber
    head, end, rest = cda.partition(b"</recordTarget>")
    return re.sub(rb"\s*<family qualifier=\"SP\">[^<]*</family>", b"", head) + end + rest


def cda_of(message: bytes) -> bytes:
    """The CDA a message's document OBX carries."""
    found = []
    with_cda(message, lambda cda: found.append(cda) or cda)
    [cda] = found
    return cda


ORU_INIT_ID = b"1.2.250.1.213.1.1.9"  # the ORU initial CDA's id (and setId)


def chained(name: str) -> bytes:
    """An example message such that the ORU examples make one chain, as the MDM ones do as published. The ORU
    examples' README (examples/ORU/readme.md, "Cas du remplacement de document") says to set the replaced
    document's id in the replacement's CDA (its relatedDocument names …12, an id no example sent: the initial's is
    …9); and the deletion carries "la dernière version du CR à supprimer" (examples/ORU/Suppression_ORU/README.md),
    which its folder ships as SEGUR_CR_Bio_CDA_Niv3_v2.xml, the replacement's CDA byte for byte (CRLF aside), while
    its message embeds another patient's CDA: the deletion gets the (chained) replacement's CDA. The MDM examples
    are returned as published."""
    message = example(name)
    if name == ORU_RPLC:
        message = with_cda(message, lambda cda: re.sub(rb'(<parentDocument>\s*<id root=")1\.2\.250\.1\.213\.1\.1\.12"',
                                                       rb"\g<1>" + ORU_INIT_ID + b'"', cda))
    elif name == ORU_DEL:
        replacement = cda_of(chained(ORU_RPLC))
        message = with_cda(message, lambda _: replacement)
    return message


def qualified(name: str) -> bytes:
    """A test fixture derived from an example message: chained (`chained`), its CDA corrected (`corrected_cda`)
    and its identity status (PID-32) QUAL instead of VALI, so its document may go to the DMP."""
    message = with_cda(chained(name), corrected_cda)
    assert message.count(b"|N|VALI") == 1
    return message.replace(b"|N|VALI", b"|N|QUAL")


def frame(message: bytes) -> bytes:
    return b"\x0b" + message + b"\x1c\r"


class Client:
    """A blocking MLLP client: one connection, send a message, read its ACK."""

    def __init__(self, address: tuple[str, int], timeout: float = 60):
        self.sock = socket.create_connection(address, timeout=timeout)

    def send(self, message: bytes) -> str:
        self.sock.sendall(frame(message))
        return self.read_ack()

    def read_ack(self) -> str:
        data = b""
        while not data.endswith(b"\x1c\r"):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the listener after {data!r}")
            data += chunk
        assert data.startswith(b"\x0b")
        return data[1:-2].decode("utf-8")

    def closed_by_peer(self) -> bool:
        """True once the listener closed the connection (reads until EOF)."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def send(address, message: bytes) -> str:
    client = Client(address)
    try:
        return client.send(message)
    finally:
        client.close()


def msa(ack: str) -> list[str]:
    """MSA fields of an ACK: [MSA-1, MSA-2]."""
    segment = next(s for s in ack.split("\r") if s.startswith("MSA|"))
    return segment.split("|")[1:3]


def err(ack: str) -> list[str]:
    segment = next((s for s in ack.split("\r") if s.startswith("ERR|")), None)
    return segment.split("|") if segment else []


class RunningListener:
    """A Listener served by its own event loop in a thread, stopped by `stop()`."""

    def __init__(self, settings, store_url: str, max_document_bytes: int = 20 * 1024 * 1024):
        from connector.intake.mllp import Listener
        from connector.intake.writer import Writer

        self.writer = Writer(store_url)
        self.writer.create_tables()
        self.listener = Listener(settings, self.writer, max_document_bytes)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.address = None

        def serve():
            asyncio.set_event_loop(self.loop)
            self.address = self.loop.run_until_complete(self.listener.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        started.wait(30)

    def stop(self) -> None:
        async def stop():
            await self.listener.stop()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # connections still open (idle clients): ended as the process's exit would
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def example_cda(name: str) -> bytes:
    """The CDA an example message carries (its document OBX-5, decoded), as the guide ships it."""
    found = []
    with_cda(example(name), lambda cda: found.append(cda) or cda)
    return found[0]
