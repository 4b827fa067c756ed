"""The link's operations across hubs (taskhub.hub.link.wire, ``Ops``): a request crosses with
its credential, partitions and arguments; its answer is the result or the leader's error,
raised on the asking hub as the leader raised it."""

from __future__ import annotations

import msgspec
import pytest

from taskhub.errors import PartitionUnavailable, PermissionDenied, ProtocolError, TaskNotFound
from taskhub.hub.link import wire


def test_an_operation_crosses_with_its_credential_partitions_and_arguments() -> None:
    entry = wire.Ops(7, "dead_letters", [1, 3], "ops", ("job:*",), ("*",), {"action": "a:b"})
    (back,) = wire.decode_to_leader(wire.frames([wire.encode_entry(entry)])[0])
    assert back == entry


def test_its_answer_is_the_result_or_the_leaders_error() -> None:
    assert wire.read_op_result(wire.op_result([{"id": "x"}])) == [{"id": "x"}]
    assert wire.read_op_result(wire.op_result(None)) is None
    with pytest.raises(TaskNotFound, match="no dead letter X") as lost:
        wire.read_op_result(wire.op_result(error=TaskNotFound("no dead letter X", task="X")))
    assert lost.value.details == {"task": "X"}
    with pytest.raises(PermissionDenied):
        wire.read_op_result(wire.op_result(error=PermissionDenied("'v' may not")))
    unled = PartitionUnavailable("partition 2 has no leader", partition=2, retry_after=1)
    with pytest.raises(PartitionUnavailable) as err:
        wire.read_op_result(wire.op_result(error=unled))
    assert err.value.details["partition"] == 2


def test_an_answer_that_is_neither_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="neither ok nor an error"):
        wire.read_op_result(msgspec.Raw(b'{"what": 1}'))
    with pytest.raises(ProtocolError):
        wire.read_op_result(msgspec.Raw(b"[1]"))
