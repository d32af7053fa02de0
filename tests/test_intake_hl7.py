"""`dmp-connector intake hl7` (issue 19): the guide's official example messages sent by a real MLLP client over
a socket, the store rows they make, acknowledgements after commit, resends recorded once, hostile input."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import subprocess

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from connector.config import IntakeHl7Settings
from connector.intake import message as hl7msg
from hl7_client import (MDM_DEL, MDM_INIT, MDM_INIT_PLACEHOLDER, MDM_RPLC, ORU_DEL, ORU_INIT, ORU_RPLC, Client,
                        RunningListener, cda_of, err, example, frame, msa, qualified, send, with_cda)
from delivery_harness import ledger_rows as rows
from delivery_harness import (NO_PKI, PLACEHOLDER_URL, connector, connector_env, ledger_states, make_folder, run_cli,
                              write_config)

INTAKE = IntakeHl7Settings(port=0, read_timeout=20, idle_timeout=60)


@pytest.fixture
def store_url(tmp_path):
    return f"sqlite:///{tmp_path / 'store.sqlite3'}"


@pytest.fixture
def listener(store_url):
    running = RunningListener(INTAKE, store_url)
    yield running
    running.stop()


DOCS = "SELECT document_id, version, status, mime_type, finess_geo, type_code, author_rpps, invisible_to_patient, " \
       "invisible_to_legal_representatives, mask_professionals, activity FROM dmp_document ORDER BY document_id, version"

MDM_ID = "1.2.250.1.71.4.2.2.120456789.71024000081"
ORU_ID = "1.2.250.1.213.1.1.9"


def test_official_examples_over_a_socket_give_their_acks_and_rows(listener, store_url):
    ack = send(listener.address, example(MDM_INIT))
    assert msa(ack) == ["AA", "015"]
    assert "ACK^T02^ACK" in ack.split("\r")[0]
    assert rows(store_url, DOCS) == [(MDM_ID, 1, "VALIDATED", "text/xml", "300017985", "18748-4", "01234564895",
                                      1, 1, 0, "I")]
    patient = rows(store_url, "SELECT patient_id, ins_matricule, ins_oid, identity_status, birth_family_name, "
                              "birth_given_names, sex, birth_date, birth_place_code FROM dmp_patient")
    assert patient == [(patient[0][0], "279035121518989", "1.2.250.1.213.1.4.10", "VALI", "PAT-TROIS", "DOMINIQUE",
                        "F", "1979-03-28", "63220")]
    assert patient[0][0].startswith("INS-") and "279035121518989" not in patient[0][0]  # no IPP: a pseudonym
    content = rows(store_url, "SELECT content FROM dmp_document")[0][0]
    assert isinstance(content, bytes) and content.startswith(b"<ClinicalDocument")

    # replacement (T10, TXA-13 = the initial's id): the document's version 2, visible now
    assert msa(send(listener.address, example(MDM_RPLC))) == ["AA", "015"]
    # deletion (T04 of the latest version): that row CANCELLED, which the corrections lifecycle withdraws
    assert msa(send(listener.address, example(MDM_DEL))) == ["AA", "015"]
    assert rows(store_url, DOCS) == [
        (MDM_ID, 1, "VALIDATED", "text/xml", "300017985", "18748-4", "01234564895", 1, 1, 0, "I"),
        (MDM_ID, 2, "CANCELLED", "text/xml", "300017985", "18748-4", "01234564895", 0, 0, 0, "I"),
    ]

    # ORU: ids from the CDA; the replacement's parent (…12) was never sent, its setId (…9) finds the document
    assert msa(send(listener.address, example(ORU_INIT))) == ["AA", "015"]
    assert msa(send(listener.address, example(ORU_RPLC))) == ["AA", "015"]
    oru = [r for r in rows(store_url, DOCS) if r[0] == ORU_ID]
    assert [(r[1], r[2], r[4]) for r in oru] == [(1, "VALIDATED", "120459876"), (2, "VALIDATED", "120459876")]

    # as published, two examples cannot be taken: say why, write nothing
    before = rows(store_url, DOCS)
    # MDM_CR_Radio_INIT_N1's OBX-5.5 is the base64 of a sentence ("Document medcial au format CDA niveau 1"), an
    # illustration: its README calls its _Base64 twin "identique au précédent mais contenant le document en
    # Base64". The guide wants the CDA there (profils-messages.md, document OBX: OBX-5.3 "XML", OBX-5.5 "Intégrer
    # le document CDA-R2"; "un segment OBX contenant un document au format CDA-R2"), and nothing could be sent to
    # the DMP without one: AE, ERR-2 OBX-5, ERR-8 saying it is not a CDA and why.
    placeholder = send(listener.address, example(MDM_INIT_PLACEHOLDER))
    assert msa(placeholder) == ["AE", "015"] and err(placeholder)[2] == "OBX^1^5"
    assert err(placeholder)[3].startswith("102^")
    assert "not a CDA" in err(placeholder)[8] and "not well-formed XML" in err(placeholder)[8]
    # The ORU deletion as published carries another patient's CDA (another INS than PID-3). A deletion's CDA is not
    # ignored by the guide: "Côté consommateur, l'id du document à supprimer est extrait du CDA à partir de
    # l'élément clinicalDocument@id" (exemples.md, deletion), "Le PID-3 doit être identique aux identifiants de
    # patient portés par le document CDA" (profils-messages.md, PID), for every message: AE naming PID-3.
    other_patient = send(listener.address, example(ORU_DEL).replace(b"|N|VALI", b"|N|QUAL"))
    assert msa(other_patient) == ["AE", "015"] and err(other_patient)[2] == "PID^1^3"
    assert "differs from PID-3" in err(other_patient)[8]
    # its own patient's CDA but the id of a version never sent (…12, the replacement's stated parent): AE 204
    unknown = with_cda(example(ORU_DEL), lambda _: cda_of(example(ORU_RPLC)).replace(
        b'<id root="1.2.250.1.213.1.1.13"/>', b'<id root="1.2.250.1.213.1.1.12"/>'))
    assert msa(ack := send(listener.address, unknown)) == ["AE", "015"] and err(ack)[3].startswith("204^")
    assert rows(store_url, DOCS) == before


def test_a_resend_after_a_lost_ack_is_recorded_once(listener, store_url):
    client = Client(listener.address)
    assert msa(client.send(example(MDM_INIT))) == ["AA", "015"]
    assert msa(client.send(example(MDM_INIT))) == ["AA", "015"]  # same MSH-10 and segments
    resent = example(MDM_INIT).replace(b"|202106060931||MDM", b"|202106060945||MDM").replace(b"|015|", b"|016|")
    assert msa(client.send(resent)) == ["AA", "016"]  # new MSH-7 and MSH-10, same document id and CDA
    client.close()
    assert len(rows(store_url, DOCS)) == 1
    assert rows(store_url, "SELECT count(*) FROM dmp_intake_message") == [(1,)]
    # the same document id with another content is not a resend: refused, nothing changed
    other = _with_cda(example(MDM_INIT), lambda cda: cda.replace(b"Radio de hanche", b"Radio du genou"))
    ack = send(listener.address, other.replace(b"|015|", b"|017|"))
    assert msa(ack) == ["AE", "017"] and err(ack)[3].startswith("205^")
    assert len(rows(store_url, DOCS)) == 1


def test_a_multi_megabyte_cda_is_taken_whole(listener, store_url):
    # one node over libxml2's 10 MB cap on a text node without huge_tree (the base64 of a ~8 MB PDF)
    padding = b"<!--" + b"x" * (11 * 1024 * 1024) + b"-->"
    big = _with_cda(example(MDM_INIT), lambda cda: cda.replace(b"</ClinicalDocument>", padding + b"</ClinicalDocument>"))
    assert len(big) > 14 * 1024 * 1024
    assert msa(send(listener.address, big)) == ["AA", "015"]
    assert len(rows(store_url, "SELECT content FROM dmp_document")[0][0]) > 11 * 1024 * 1024


def test_postgresql_store_with_tables_created(pg_url):
    running = RunningListener(INTAKE, pg_url)
    try:
        assert msa(send(running.address, example(ORU_INIT))) == ["AA", "015"]
        assert msa(send(running.address, example(ORU_INIT))) == ["AA", "015"]
    finally:
        running.stop()
    assert rows(pg_url, "SELECT document_id, version, status FROM dmp_document") == [(ORU_ID, 1, "VALIDATED")]


def test_postgresql_store_compresses_cdas_with_lz4(pg_url):
    """pglz, PostgreSQL's default, spent ~25 ms of the commit per MB of a CDA carrying a base64 PDF (bench/intake.py)."""
    running = RunningListener(INTAKE, pg_url)
    padding = b"<!--" + b"compressible " * 20_000 + b"-->"  # a value TOAST compresses, so its method shows
    try:
        message = _with_cda(example(ORU_INIT), lambda cda: cda.replace(b"</ClinicalDocument>", padding + b"</ClinicalDocument>"))
        assert msa(send(running.address, message)) == ["AA", "015"]
    finally:
        running.stop()
    assert rows(pg_url, "SELECT pg_column_compression(content) FROM dmp_document") == [("lz4",)]


def _queued_then_committed(writer, messages: list[bytes]) -> list:
    """Each message written from its own thread while the writer is busy (its lock held), then let go: what each
    write returned or raised, and how many transactions were committed meanwhile."""
    import threading
    import time

    commits = []
    sa.event.listen(writer.engine, "commit", lambda conn: commits.append(1))
    intakes = [hl7msg.read(m, 20 * 1024 * 1024) for m in messages]
    results: list = [None] * len(intakes)

    def write(i):
        try:
            results[i] = writer.write(intakes[i])
        except hl7msg.Refused as refused:
            results[i] = refused

    with writer._lock:
        threads = [threading.Thread(target=write, args=(i,)) for i in range(len(intakes))]
        for t in threads:
            t.start()
        while len(writer._queue) < len(intakes):
            time.sleep(0.01)  # each thread queued its intake, waiting for the lock
    for t in threads:
        t.join(30)
    return results, len(commits)


def test_a_sqlite_store_is_put_in_wal_mode_with_durable_commits(store_url):
    """One fsync per commit instead of the rollback journal's several (bench/intake.py), durable when it returns."""
    from connector.intake.writer import Writer

    writer = Writer(store_url)
    writer.create_tables()
    with writer.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA journal_size_limit").scalar() == 64 * 1024 * 1024
    writer.engine.dispose()
    assert rows(store_url, "PRAGMA journal_mode") == [("wal",)]  # the file's, for its other readers too


def test_intakes_waiting_for_a_commit_are_committed_together_once_each(store_url):
    from connector.intake.writer import Writer

    writer = Writer(store_url)
    writer.create_tables()
    results, commits = _queued_then_committed(writer, [example(MDM_INIT), example(ORU_INIT), example(ORU_INIT)])
    assert commits == 1  # one transaction, one wait for the disk, for the three
    assert sorted((r.document_id, r.duplicate) for r in results) == sorted([(MDM_ID, False), (ORU_ID, False),
                                                                            (ORU_ID, True)])
    assert sorted(rows(store_url, "SELECT document_id FROM dmp_document")) == sorted([(MDM_ID,), (ORU_ID,)])


def test_a_refused_intake_among_others_committed_together_loses_none_of_them(store_url):
    from connector.intake.writer import Writer

    writer = Writer(store_url)
    writer.create_tables()
    writer.write(hl7msg.read(example(MDM_INIT), 20 * 1024 * 1024))
    other = _with_cda(example(MDM_INIT), lambda cda: cda.replace(b"Radio de hanche", b"Radio du genou"))
    results, _ = _queued_then_committed(writer, [example(ORU_INIT), other])
    by_kind = {type(r).__name__: r for r in results}
    assert by_kind["Written"].document_id == ORU_ID and not by_kind["Written"].duplicate
    assert by_kind["Refused"].code == "205"
    assert sorted(rows(store_url, "SELECT document_id, version FROM dmp_document")) == sorted([(MDM_ID, 1), (ORU_ID, 1)])
    assert rows(store_url, f"SELECT title FROM dmp_document WHERE document_id = '{MDM_ID}'") == [("Radio de hanche",)]


def test_destdmp_n_is_recorded_then_skipped_not_for_dmp(tmp_path, listener, store_url):
    """A document its sender marks not destined to the DMP is stored and skipped with its own reason (not
    DOCUMENT_NOT_VALIDATED: nothing is wrong with it), which status and the Prometheus labels show."""
    message = qualified(MDM_INIT).replace(b"DESTDMP^Destinataire DMP^MetaDMPMSS||Y",
                                          b"DESTDMP^Destinataire DMP^MetaDMPMSS||N")
    assert msa(send(listener.address, message)) == ["AA", "015"]
    assert rows(store_url, "SELECT status FROM dmp_document") == [("NOT_FOR_DMP",)]
    folder = make_folder(tmp_path / "connector")
    cfg = folder.configure(PLACEHOLDER_URL, store={"url": store_url})  # nothing to send: the DMP is not called
    result = run_cli(cfg)
    assert result.returncode == 0, result.stderr
    set_id = "1.2.250.1.71.4.2.2.120456789.71024000080"  # the corrected CDA's setId: its document id
    assert ledger_states(folder.ledger_url) == {(set_id, 1): ("SKIPPED", "NOT_FOR_DMP")}
    status = subprocess.run(connector("status", "--format", "json", "--prometheus", str(tmp_path / "prom"),
                                      "--config", str(cfg)), env=connector_env(), capture_output=True, text=True)
    assert {"state": "SKIPPED", "reason": "NOT_FOR_DMP", "count": 1} in json.loads(status.stdout)["documents_by_reason"]
    prometheus = (tmp_path / "prom").read_text()
    assert 'dmp_connector_documents_by_reason{state="SKIPPED",reason="NOT_FOR_DMP"} 1' in prometheus


# --- a run over what the intake wrote ----------------------------------------------------------------


def test_examples_as_sent_are_skipped_ins_not_qualified_in_a_run(tmp_path, listener, store_url):
    for name in (MDM_INIT, ORU_INIT):
        assert msa(send(listener.address, example(name))) == ["AA", "015"]
    folder = make_folder(tmp_path / "connector")
    cfg = folder.configure(PLACEHOLDER_URL, store={"url": store_url})  # nothing to send: the DMP is not called
    result = run_cli(cfg)
    assert result.returncode == 0, result.stderr
    states = ledger_states(folder.ledger_url)
    assert states == {(MDM_ID, 1): ("SKIPPED", "INS_NOT_QUALIFIED"), (ORU_ID, 1): ("SKIPPED", "INS_NOT_QUALIFIED")}


# --- a kill -9 between the commit and the ACK ---------------------------------------------------------


def test_kill_between_commit_and_ack_then_resend_gives_one_document(tmp_path, store_url):
    port = _free_port()
    cfg = write_config(tmp_path / "connector.toml", store={"url": store_url},
                       **{"": {"state_dir": str(tmp_path / "state")}, "intake.hl7": {"listen": f"127.0.0.1:{port}"}},
                       **NO_PKI)
    def start(crash_at=None):
        log = tmp_path / f"intake-{crash_at}.log"
        out = open(log, "ab")
        process = subprocess.Popen(connector("intake", "hl7", "--config", str(cfg)), env=connector_env(crash_at),
                                   stdout=out, stderr=subprocess.STDOUT)
        out.close()
        _wait_listening(process, log, port)
        return process, log

    first, _ = start("intake_after_commit")
    client = Client(("127.0.0.1", port))
    with pytest.raises(ConnectionError):
        client.send(example(MDM_INIT))  # committed, then killed: no ACK
    client.close()
    assert first.wait(60) == -9
    assert rows(store_url, "SELECT count(*) FROM dmp_document") == [(1,)]
    second, log = start()
    try:
        assert msa(send(("127.0.0.1", port), example(MDM_INIT))) == ["AA", "015"]  # the sender's resend
    finally:
        second.terminate()
        assert second.wait(60) == 0
    assert rows(store_url, DOCS)[0][:3] == (MDM_ID, 1, "VALIDATED")
    assert len(rows(store_url, DOCS)) == 1
    assert "already recorded (a resend)" in log.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(process, log, port: int) -> None:
    """Until the process says it listens (read from its own log), or ends."""
    import time

    pattern = re.compile(rf"listening on 127\.0\.0\.1:{port}")
    while process.poll() is None:
        if pattern.search(log.read_text(errors="replace")):
            return
        time.sleep(0.05)  # polling the log file: the process's line is the synchronisation
    raise AssertionError(f"intake ended: {log.read_text()}")


# --- hostile input ------------------------------------------------------------------------------------


_with_cda = with_cda


HOSTILE = {
    "not HL7 in a frame": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "100"),
    "wrong encoding characters": (lambda m: m.replace(b"MSH|^~\\&|", b"MSH|^^\\&|", 1), "102"),
    "missing PID": (lambda m: re.sub(rb"PID\|[^\r]*\r", b"", m), "100"),
    "missing TXA": (lambda m: re.sub(rb"TXA\|[^\r]*\r", b"", m), "100"),
    "unsupported event": (lambda m: m.replace(b"MDM^T02^MDM_T02", b"MDM^T01^MDM_T01"), "201"),
    "unsupported type": (lambda m: m.replace(b"MDM^T02^MDM_T02", b"ADT^A01^ADT_A01"), "200"),
    "ORC-1 disagrees": (lambda m: m.replace(b"ORC|NW|", b"ORC|CA|"), "103"),
    "CDA not XML": (lambda m: _with_cda(m, lambda cda: b"%PDF-1.4 not a CDA"), "102"),
    "CDA with a DOCTYPE": (lambda m: _with_cda(m, lambda cda: b'<!DOCTYPE x [<!ENTITY a "b">]>' + cda), "102"),
    "CDA INS differs from PID": (lambda m: _with_cda(m, lambda cda: cda.replace(b"279035121518989", b"279035121518990")),
                                 "207"),
    "bad base64": (lambda m: m.replace(b"^Base64^PENsaW5p", b"^Base64^P*Nsa!5p"), "102"),
    "not UTF-8": (lambda m: m.replace(b"PAT-TROIS^", b"PAT-TR\xffIS^", 1), "102"),
    "unknown charset": (lambda m: m.replace(b"UNICODE UTF-8", b"EBCDIC"), "103"),
    "replacement of an unknown document": (lambda m: m.replace(b"MDM^T02", b"MDM^T10").replace(b"ORC|NW|", b"ORC|RO|")
                                           .replace(b"71024000081|||||AU", b"71024000081|1.2.3.4.5|||||AU"), "101"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_messages_get_ae_with_err_and_write_nothing(case, listener, store_url, caplog):
    change, code = HOSTILE[case]
    message = change(example(MDM_INIT)) if callable(change) else change
    with caplog.at_level("WARNING", logger="connector.intake"):
        ack = send(listener.address, message)
    assert msa(ack)[0] == "AE"
    assert err(ack)[3].split("^")[0] == code, err(ack)
    assert rows(store_url, "SELECT count(*) FROM dmp_document") == [(0,)]
    assert any("refused AE" in r.getMessage() for r in caplog.records)
    _no_patient_data(caplog.text + ack)
    assert msa(send(listener.address, example(MDM_INIT)))[0] == "AA"  # the listener goes on


def _no_patient_data(text: str) -> None:
    for value in ("279035121518989", "PAT-TROIS", "DOMINIQUE", "19790328", "Breteuil"):
        assert value not in text


def test_bytes_outside_mllp_are_closed_with_a_warning(listener, caplog):
    with caplog.at_level("WARNING", logger="connector.intake"):
        client = Client(listener.address)
        client.sock.sendall(b"MSH|^~\\&|no framing\r")
        assert client.closed_by_peer()
        client.close()
    assert "bytes outside an MLLP block" in caplog.text
    assert msa(send(listener.address, example(ORU_INIT)))[0] == "AA"


def test_a_message_over_the_cap_gets_ae_and_its_connection_closed(store_url, caplog):
    small = dataclasses.replace(INTAKE, max_message_bytes=64 * 1024)
    running = RunningListener(small, store_url)
    try:
        client = Client(running.address)
        with caplog.at_level("WARNING", logger="connector.intake"):
            client.sock.sendall(frame(example(MDM_INIT)))
            ack = client.read_ack()
            assert client.closed_by_peer()
        client.close()
        assert msa(ack) == ["AE", "015"] and "max_message_bytes" in err(ack)[8]
        assert rows(store_url, "SELECT count(*) FROM dmp_document") == [(0,)]
        assert msa(send(running.address, example(MDM_INIT_PLACEHOLDER)))[0] == "AE"  # small: read, refused as a CDA
    finally:
        running.stop()


def test_connections_over_the_limit_are_closed_and_the_listener_serves_on(store_url, caplog):
    few = dataclasses.replace(INTAKE, max_connections=3)
    running = RunningListener(few, store_url)
    try:
        held = [Client(running.address) for _ in range(3)]
        for client in held:  # each connection is served (one message each) before the next is counted
            assert msa(client.send(example(ORU_INIT)))[0] == "AA"
        with caplog.at_level("WARNING", logger="connector.intake"):
            extra = [Client(running.address) for _ in range(20)]
            assert all(c.closed_by_peer() for c in extra)
        assert "max_connections (3) reached" in caplog.text
        for c in extra + held:
            c.close()
        assert msa(send(running.address, example(ORU_INIT)))[0] == "AA"
    finally:
        running.stop()
    assert running.listener.figures.connections_refused >= 20


def test_a_sender_stalled_mid_message_is_closed(store_url, caplog):
    quick = dataclasses.replace(INTAKE, read_timeout=0.5)
    running = RunningListener(quick, store_url)
    try:
        client = Client(running.address)
        with caplog.at_level("WARNING", logger="connector.intake"):
            client.sock.sendall(b"\x0b" + example(MDM_INIT)[:1000])
            assert client.closed_by_peer()
        client.close()
        assert "stalled in the middle of a message" in caplog.text
    finally:
        running.stop()


# --- the parser, fuzzed over the examples' segments ----------------------------------------------------

_SEGMENTS = [s for name in (MDM_INIT_PLACEHOLDER, ORU_INIT) for s in example(name).split(b"\r") if s]
_SMALL = [s if len(s) < 4000 else s[:4000] for s in _SEGMENTS]


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_SMALL), min_size=1, max_size=25),
       st.lists(st.tuples(st.integers(0, 3000), st.binary(max_size=8)), max_size=6),
       st.sampled_from([b"\r", b"\n", b"\r\n"]))
def test_fuzzed_messages_are_read_or_refused_never_crash(segments, mutations, separator):
    data = bytearray(separator.join(segments))
    for position, insert in mutations:
        position = min(position, len(data))
        data[position:position + len(insert)] = insert
    try:
        intake = hl7msg.read(bytes(data), 1024 * 1024)
    except hl7msg.Refused as refused:
        ack = hl7msg.ack(None, refused.ack_code, refused)
        assert ack.startswith(b"MSH|")
    else:
        assert intake.action in (hl7msg.INITIAL, hl7msg.REPLACEMENT, hl7msg.DELETION)
    try:
        header = hl7msg.read_header(bytes(data))
    except hl7msg.Refused:
        return
    ack = hl7msg.ack(header, "AA").decode("utf-8")
    assert ack.count("\r") == 2 and all(s[:3] in ("MSH", "MSA") for s in ack.split("\r") if s)


_ED_COMPONENTS = st.lists(st.sampled_from(["", "text", "XML", "Base64", "a~b", "a&b", "é", "\\S\\"]), max_size=6)
_ED_DATA = st.lists(st.sampled_from(["QUJD", "RA==", "\\F\\", "\\", "~", "&", "^", "|", " ", "é", "\r", "\n", "ED"]),
                    max_size=6)


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_SMALL[1:8]), max_size=3),
       st.lists(st.tuples(_ED_COMPONENTS, _ED_DATA, st.sampled_from(["", "|||F", "~x"])), min_size=1, max_size=3))
def test_ed_data_set_aside_reads_as_python_hl7_reads_it_in_place(others, ed_fields):
    """The ED data cut out before parsing (the CPU of a multi-megabyte message) are what python-hl7 reads there."""
    import hl7

    obx = [f"OBX|{i}|ED|18748-4^CR^LN||" + "^".join(components + ["".join(data)]) + end
           for i, (components, data, end) in enumerate(ed_fields, 1)]
    text = "\r".join(["MSH|^~\\&|A|B|C|D|20240101||MDM^T02|1|P|2.6"] + [s.decode("utf-8", "replace") for s in others]
                     + obx + ["OBX|9|CE|DESTDMP||Y"])
    reduced, payloads = hl7msg._set_aside(text, hl7msg.Header())
    lines = lambda t: "\r".join(s for s in re.split(r"\r\n|\r|\n", t) if s.strip())  # noqa: E731 - as read() does
    try:
        whole = hl7msg._Message(hl7.parse(lines(text)))
    except Exception:  # noqa: BLE001 - not HL7 at all: read() refuses it before any of this
        return
    cut = hl7msg._Message(hl7.parse(lines(reduced)), payloads)
    assert len(whole.all("OBX")) == len(cut.all("OBX"))
    for mine, theirs in zip(cut.all("OBX"), whole.all("OBX")):
        assert cut.ed_data(mine) == whole.get(theirs, 5, 1, 5).encode("utf-8")
    assert [str(s) for s in cut.message if str(s[0]) != "OBX"] == [str(s) for s in whole.message if str(s[0]) != "OBX"]


@given(st.binary(max_size=40).map(lambda b: bytes(b"\x1c\ra"[x % 3] for x in b)), st.integers(0, 45))
def test_the_end_of_a_block_is_found_as_a_two_byte_search_finds_it(data, start):
    from connector.intake.mllp import END, _find_end

    assert _find_end(bytearray(data), start) == data.find(END, start)


def test_ack_escapes_what_it_echoes():
    header = dataclasses.replace(hl7msg.Header(), sending_application="A|B^C", control_id="X\rMSA|AA|1")
    ack = hl7msg.ack(header, "AE", hl7msg.Refused("bad | field", "PID^1^3", "102")).decode()
    segments = [s for s in ack.split("\r") if s]
    assert [s[:3] for s in segments] == ["MSH", "MSA", "ERR"]
    assert segments[1] == "MSA|AE|XMSA\\F\\AA\\F\\1"
    assert segments[2] == "ERR||PID^1^3|102^Data type error^HL70357|E||||bad \\F\\ field"
    assert json.dumps(ack)  # printable


# --- TLS with client certificates ---------------------------------------------------------------------


def test_tls_listener_requires_a_client_certificate(tmp_path, pki, store_url):
    import ssl

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    server_key = serialization.load_pem_private_key(pki.server_key.read_bytes(),
                                                    pki.server_password_file.read_bytes().strip())
    (tmp_path / "server.key").write_bytes(pem_key(server_key))
    key, cert, _ = pkcs12.load_key_and_certificates(pki.auth_cli_p12.read_bytes(),
                                                    pki.auth_cli_password_file.read_bytes().strip())
    (tmp_path / "client.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + pem_key(key))
    tls = dataclasses.replace(INTAKE, tls_certificate=pki.server_cert, tls_key=tmp_path / "server.key",
                              tls_client_ca=pki.ca_cert)
    running = RunningListener(tls, store_url)
    try:
        def connect(with_certificate: bool):
            context = ssl.create_default_context(cafile=str(pki.ca_cert))
            context.check_hostname = False  # the test server certificate's name is not what matters here
            if with_certificate:
                context.load_cert_chain(tmp_path / "client.pem")
            raw = socket.create_connection(running.address, timeout=30)
            return context.wrap_socket(raw)

        with connect(True) as sock:
            sock.sendall(frame(example(ORU_INIT)))
            data = b""
            while not data.endswith(b"\x1c\r"):
                data += sock.recv(65536)
        assert msa(data[1:-2].decode()) == ["AA", "015"]
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with connect(False) as sock:  # TLS 1.3: the refusal may come with the first read
                sock.sendall(frame(example(ORU_INIT)))
                if not sock.recv(65536):
                    raise ConnectionError("closed")
        plain = socket.create_connection(running.address, timeout=30)  # no TLS at all: closed, never served
        plain.sendall(frame(example(ORU_INIT)))
        with pytest.raises(ConnectionError):
            if not plain.recv(65536):
                raise ConnectionError("closed")
        plain.close()
    finally:
        running.stop()
    assert rows(store_url, "SELECT count(*) FROM dmp_document") == [(1,)]
