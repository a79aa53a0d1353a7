"""KuboClient's mapping of the CoreAPI onto kubo's commands, through a MockTransport: no
socket, the handler plays kubo (its replies are written after kubo's wire conventions)."""

from __future__ import annotations

import json

import pytest

from ww.ipfs.api import (
    BackendUnavailableError,
    CallCancelled,
    CancelToken,
    EntryType,
    InvalidPathError,
    IpfsError,
    NotAFileError,
    NotFoundError,
    UnsupportedError,
    cancellable,
)
from ww.ipfs.kubo import KuboClient, classify_error
from ww.ipfs.kubo_transport import KuboRequest, KuboResponse, MockTransport

CID = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"


def kubo_error(message: str, code: int = 0, status: int = 500) -> KuboResponse:
    body = json.dumps({"Message": message, "Code": code, "Type": "error"}).encode() + b"\n"
    return KuboResponse(status=status, body=body)


def client_answering(response: KuboResponse, seen: list[KuboRequest] | None = None) -> KuboClient:
    def handler(request: KuboRequest) -> KuboResponse:
        if seen is not None:
            seen.append(request)
        return response

    return KuboClient(transport=MockTransport(handler, api="/ip4/127.0.0.1/tcp/5001"))


@pytest.mark.parametrize(
    ("code", "status"),
    [(4, 403), (3, 429)],  # go-ipfs-cmds' ErrForbidden and ErrRateLimited
)
def test_kubos_refusal_codes_mean_the_backend_will_not_serve(code, status):
    client = client_answering(kubo_error("API access is restricted", code=code, status=status))
    with pytest.raises(BackendUnavailableError, match="refused pin/ls .*restricted"):
        client.pins()


def test_a_refusal_code_in_a_stream_trailer_is_the_backend_refusing():
    from ww.ipfs.kubo import classify_error

    assert isinstance(classify_error("slow down", code=3), BackendUnavailableError)
    # Code 3 is not "not found" (go-ipfs-cmds has no such code): a message that says so is
    # still a refusal, never a missing block.
    assert not isinstance(classify_error("not found", code=3), NotFoundError)


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        ('invalid path "/ipfs/x": invalid cid', InvalidPathError),
        ("this dag node is a directory", NotAFileError),
        ('no link named "nope" under Qm...', NotFoundError),
        ("block was not found locally (offline)", NotFoundError),
        ("Qm... is not pinned or pinned indirectly", NotFoundError),
        ("this action must be run in online mode", UnsupportedError),
        ("something else went wrong", IpfsError),
    ],
)
def test_a_message_only_error_is_classified_by_its_phrase(message: str, cls: type):
    error = classify_error(message)
    assert type(error) is cls and str(error) == message
    with pytest.raises(cls, match=message[:10]):
        client_answering(kubo_error(message)).resolve(CID)


def test_a_plain_404_is_an_unknown_command():
    client = client_answering(KuboResponse(status=404, body=b"404 page not found\n"))
    with pytest.raises(UnsupportedError, match="has no 'pin/ls'"):
        client.pins()


def test_a_stream_error_trailer_raises_after_the_bytes():
    client = client_answering(KuboResponse(body=b"partial", stream_error="ipld: could not find"))
    pieces = client.cat(CID)
    assert next(pieces) == b"partial"
    with pytest.raises(NotFoundError, match="could not find"):
        next(pieces)


def test_cat_past_the_end_gives_no_bytes():
    client = client_answering(kubo_error("offset was past the end of file (10 > 5)"))
    assert list(client.cat(CID, 10)) == []


def test_ls_maps_kubos_types_and_sends_the_normalized_path():
    seen: list[KuboRequest] = []
    links = [{"Name": "d", "Hash": CID, "Size": 0, "Type": 1},
             {"Name": "f", "Hash": CID, "Size": 7, "Type": 2},
             {"Name": "l", "Hash": CID, "Size": 3, "Type": 4}]
    body = json.dumps({"Objects": [{"Hash": CID, "Links": links}]}).encode() + b"\n"
    entries = client_answering(KuboResponse(body=body), seen).ls(CID)
    assert [(e.name, e.type, e.size) for e in entries] == [
        ("d", EntryType.DIRECTORY, 0), ("f", EntryType.FILE, 7), ("l", EntryType.SYMLINK, 3)]
    assert seen[0].command == "ls" and seen[0].args == [f"/ipfs/{CID}"]


def test_iter_ls_asks_kubo_to_stream_and_reads_a_line_per_link():
    """`ww ls --ipfs` held kubo's whole answer (one JSON value of every link); it asks for
    kubo's stream (a line per link) and gives each entry as its line is read."""
    seen: list[KuboRequest] = []
    lines = [{"Objects": [{"Hash": CID, "Links": [link]}]} for link in (
        {"Name": "d", "Hash": CID, "Size": 0, "Type": 1},
        {"Name": "f", "Hash": CID, "Size": 7, "Type": 2})]
    body = b"".join(json.dumps(v).encode() + b"\n" for v in lines)
    entries = client_answering(KuboResponse(body=body), seen).iter_ls(CID)
    assert seen[0].command == "ls" and seen[0].param("stream") == "true"
    assert [(e.name, e.type, e.size) for e in entries] == [
        ("d", EntryType.DIRECTORY, 0), ("f", EntryType.FILE, 7)]


def test_add_parses_the_reply_lines_and_sends_the_body():
    seen: list[KuboRequest] = []
    body = b'{"Name":"data","Bytes":5}\n{"Name":"data","Hash":"%s","Size":"13"}\n' % CID.encode()
    cid = client_answering(KuboResponse(body=body), seen).add_stream([b"he", b"llo"])
    assert cid == CID
    request = seen[0]
    assert request.command == "add" and request.param("cid-version") == "0"
    assert request.content_type.startswith("multipart/form-data; boundary=")
    assert b"\r\n\r\nhello\r\n--" in request.body


def test_a_cancelled_call_does_not_reach_the_transport():
    seen: list[KuboRequest] = []
    client = client_answering(KuboResponse(body=b"{}\n"), seen)
    token = CancelToken()
    token.cancel()
    with cancellable(token), pytest.raises(CallCancelled):
        client.id()
    assert seen == []


def test_pin_ls_reads_kubos_streamed_lines_and_its_keys_map():
    seen: list[KuboRequest] = []
    other = "QmNLei78zWmzUdbeRB3CiUfAizWUrbeeZh5K1rhAQKCh51"
    streamed = b"".join(json.dumps(v).encode() + b"\n" for v in [
        {"Cid": CID, "Name": "", "Type": "recursive"}, {"Cid": other, "Type": "indirect"}])
    client = client_answering(KuboResponse(status=200, body=streamed), seen)
    assert client.pin_ls() == {CID: "recursive", other: "indirect"}
    assert ("stream", "true") in seen[0].query and ("type", "all") in seen[0].query
    # a kubo that does not stream answers with one map; "indirect through <cid>" is indirect
    keys = {"Keys": {CID: {"Type": f"indirect through {other}"}}}
    client = client_answering(KuboResponse(status=200, body=json.dumps(keys).encode()))
    assert client.pin_ls("indirect") == {CID: "indirect"}


def test_pin_ls_of_an_unknown_pin_type_in_kubos_reply_is_an_error():
    body = json.dumps({"Cid": CID, "Type": "sideways"}).encode()
    client = client_answering(KuboResponse(status=200, body=body))
    with pytest.raises(IpfsError, match="unknown type 'sideways'"):
        client.pin_ls()


def test_repo_stat_maps_kubos_fields_and_its_no_limit():
    fields = {"RepoSize": 123, "StorageMax": 2**64 - 1, "NumObjects": 4,
              "RepoPath": "/data/ipfs", "Version": "fs-repo@15"}
    client = client_answering(KuboResponse(status=200, body=json.dumps(fields).encode()))
    info = client.repo_stat()
    assert (info.repo_size, info.num_objects, info.storage_max) == (123, 4, None)
    assert (info.repo_path, info.version) == ("/data/ipfs", "fs-repo@15")
    client = client_answering(KuboResponse(status=200, body=b'{"RepoSize": "x"}'))
    with pytest.raises(IpfsError, match="unexpected reply to repo/stat"):
        client.repo_stat()


@pytest.mark.parametrize(("call", "body"), [
    (lambda c: c.id(), {"Addresses": []}),
    (lambda c: c.id(), {"ID": "x", "Addresses": 5}),
    (lambda c: c.peers(), {"Peers": [{"Addr": "/ip4/127.0.0.1/tcp/1"}]}),
    (lambda c: c.peers(), {"Peers": ["not a peer"]}),
    (lambda c: c.pin_ls(), {"Keys": ["not", "a", "map"]}),
    (lambda c: c.pin_ls(), {"Keys": {CID: "recursive"}}),
    (lambda c: c.ls(f"/ipfs/{CID}"), {"Objects": [{"Links": [{"Type": 2}]}]}),
    (lambda c: c.ls(f"/ipfs/{CID}"), {"Objects": [{"Links": ["not a link"]}]}),
    (lambda c: c.ls(f"/ipfs/{CID}"), {"Objects": [{"Links": 5}]}),
    (lambda c: c.ls(f"/ipfs/{CID}"), {"Objects": [{"Links": [{"Name": "a", "Type": [2]}]}]}),
    (lambda c: c.ls(f"/ipfs/{CID}"),
     {"Objects": [{"Links": [{"Name": "a", "Type": 2, "Size": 1e999, "Hash": CID}]}]}),
    (lambda c: c.repo_stat(), {"RepoSize": 1e999, "NumObjects": 1}),
    (lambda c: c.pins(), {"Keys": ["not", "a", "map"]}),
    (lambda c: c.add_stream([b"x"]), {"Name": "data", "Hash": 5}),
    (lambda c: c.add_stream([b"x"]), {"Name": "data", "Hash": [CID]}),
    (lambda c: c.add_stream([b"x"]), {"Name": "data", "Hash": None}),
    (lambda c: c.add_stream([b"x"]), {"Name": "data", "Hash": "\x1b]0;owned\x07" + CID}),
    (lambda c: c.add_stream([b"x"]), {"Name": "data", "Hash": "not a CID\nadded " + CID}),
], ids=["id-no-ID", "id-addresses", "peers-no-Peer", "peers-not-maps", "pin_ls-keys-list",
        "pin_ls-info-str", "ls-link-no-name", "ls-link-not-a-map", "ls-links-not-a-list",
        "ls-type-unhashable", "ls-size-infinite", "repo_stat-size-infinite",
        "pins-keys-list", "add-hash-number", "add-hash-list", "add-hash-null",
        "add-hash-terminal-escape", "add-hash-two-lines"])
def test_a_reply_without_kubos_fields_is_one_line_not_an_internal_error(call, body):
    """A broken or foreign server at the API address (a KeyError or TypeError reading its
    reply was an internal error with a traceback)."""
    client = client_answering(KuboResponse(status=200, body=json.dumps(body).encode()))
    with pytest.raises(IpfsError, match="sent an unexpected reply to"):
        call(client)


@pytest.mark.parametrize("status", [200, 500], ids=["reply", "error"])
def test_json_nested_too_deep_is_one_line_not_a_recursion_error(status):
    """(found by attack) A broken or foreign server at the API address answers an `add` with
    JSON nested 100,000 deep (100 kB: a line, or an error's body): Python's parser raised
    RecursionError, which the old client let through (`ww: internal error: RecursionError`,
    as for a bug of ww's).  Now it is the line for malformed JSON, or the error's status."""
    client = client_answering(KuboResponse(status=status, body=b"[" * 100_000 + b"\n"))
    with pytest.raises(IpfsError, match="the kubo RPC API at"):
        client.add_stream([b"x"])
