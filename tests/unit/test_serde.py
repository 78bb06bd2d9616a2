"""Round trips and validation of ppml.proto.wire.serde (every domain <-> protobuf pair)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from ppml.proto.domain import architecture as arch
from ppml.proto.domain import commands as cmd
from ppml.proto.domain import status as st
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.ids import check_id
from ppml.proto.shares import FRACTIONAL_BITS, random_ring
from ppml.proto.wire import serde
from ppml.servers import kinds
from ppml.servers.kinds.heartbeat import HeartbeatJob
from ppml.servers.kinds.predict import PredictJob
from ppml.servers.kinds.refill import RefillJob
from ppml.v1 import common_pb2, coordinator_pb2, inference_pb2, registry_pb2, status_pb2

INT64_MIN = np.iinfo(np.int64).min
INT64_MAX = np.iinfo(np.int64).max


def _code(excinfo: pytest.ExceptionInfo[PpmlError]) -> ErrorCode:
    return excinfo.value.code


# ---------------------------------------------------------------- shares

SHAPES = [(1,), (5,), (2, 3), (1, 8), (2, 3, 4), (1, 1, 1, 1, 1), (0,), (3, 0), (2, 0, 5)]


@pytest.mark.parametrize("shape", SHAPES)
def test_share_round_trip(shape: tuple[int, ...]) -> None:
    value = random_ring(shape)
    flat = value.reshape(-1)
    specials = np.array([INT64_MIN, INT64_MAX, -1, 0, 1], dtype=np.int64)
    flat[: min(flat.size, specials.size)] = specials[: flat.size]
    msg = serde.share_to_proto(value)
    assert list(msg.shape) == list(shape)
    assert msg.dtype == common_pb2.DTYPE_RING64
    assert msg.fractional_bits == FRACTIONAL_BITS
    assert len(msg.data) == 8 * value.size
    back = serde.share_from_proto(common_pb2.ShareTensor.FromString(msg.SerializeToString()))
    assert back.dtype == np.int64
    assert back.shape == shape
    np.testing.assert_array_equal(back, value)


def test_share_wire_bytes_are_little_endian_c_order() -> None:
    value = np.array([[1, -2], [INT64_MIN, INT64_MAX]], dtype=np.int64)
    msg = serde.share_to_proto(value)
    expected = b"".join(
        int(v).to_bytes(8, "little", signed=True) for v in [1, -2, INT64_MIN, INT64_MAX]
    )
    assert msg.data == expected


def test_share_to_proto_accepts_non_contiguous_and_big_endian() -> None:
    value = np.arange(12, dtype=np.int64).reshape(3, 4).T  # Fortran-ordered view
    np.testing.assert_array_equal(serde.share_from_proto(serde.share_to_proto(value)), value)
    big = np.array([1, -1, 300], dtype=">i8")
    np.testing.assert_array_equal(serde.share_from_proto(serde.share_to_proto(big)), [1, -1, 300])


def test_share_to_proto_fills_a_requests_field_in_place() -> None:
    request = inference_pb2.PredictRequest(request_id="r1", model_id="m1")
    serde.share_to_proto(np.arange(6, dtype=np.int64).reshape(3, 2), out=request.input)
    value = np.array([[INT64_MIN, -1, INT64_MAX]], dtype=np.int64)
    filled = serde.share_to_proto(value, out=request.input)  # a second fill replaces the first
    assert filled is request.input
    wire = inference_pb2.PredictRequest.FromString(request.SerializeToString())
    assert (wire.request_id, wire.model_id) == ("r1", "m1")
    assert wire.input == serde.share_to_proto(value)
    np.testing.assert_array_equal(serde.share_from_proto(wire.input), value)


def test_share_from_proto_result_is_writable_copy() -> None:
    msg = serde.share_to_proto(np.arange(4, dtype=np.int64))
    back = serde.share_from_proto(msg)
    back[0] = 99  # must not raise (frombuffer alone would be read-only)
    assert serde.share_from_proto(msg)[0] == 0


def _valid_msg() -> common_pb2.ShareTensor:
    return serde.share_to_proto(np.arange(6, dtype=np.int64).reshape(2, 3))


def _with(**changes: object) -> common_pb2.ShareTensor:
    msg = _valid_msg()
    for key, value in changes.items():
        if key == "shape":
            del msg.shape[:]
            msg.shape.extend(value)
        else:
            setattr(msg, key, value)
    return msg


@pytest.mark.parametrize(
    "msg",
    [
        pytest.param(_with(dtype=common_pb2.DTYPE_UNSPECIFIED), id="dtype-unspecified"),
        pytest.param(_with(dtype=7), id="dtype-unknown"),
        pytest.param(_with(fractional_bits=0), id="fractional-bits-0"),
        pytest.param(_with(fractional_bits=15), id="fractional-bits-15"),
        pytest.param(_with(fractional_bits=32), id="fractional-bits-32"),
        pytest.param(_with(data=b"\x00" * 40), id="too-few-bytes"),
        pytest.param(_with(data=b"\x00" * 56), id="too-many-bytes"),
        pytest.param(_with(data=b""), id="no-bytes"),
        pytest.param(_with(data=b"garbage!garbage"), id="garbage-bytes"),
        pytest.param(_with(data=b"\xff" * 47), id="not-a-multiple-of-8"),
        pytest.param(_with(shape=[-2, -3]), id="negative-dims"),
        pytest.param(_with(shape=[2, -3]), id="one-negative-dim"),
        pytest.param(_with(shape=[]), id="no-shape"),
        pytest.param(_with(shape=[1 << 14, 1 << 14], data=b""), id="too-many-elements"),
        # zero elements, but numpy cannot make an array of these shapes (found by fuzzing)
        pytest.param(_with(shape=[0, 1 << 62], data=b""), id="zero-by-huge"),
        pytest.param(_with(shape=[1 << 62, 0], data=b""), id="huge-by-zero"),
        pytest.param(_with(shape=[0, 1 << 31, 1 << 31], data=b""), id="zero-by-overflow"),
        pytest.param(_with(shape=[1] * 17, data=b"\x00" * 8), id="too-many-dims"),
        pytest.param(_with(shape=[1] * 70, data=b"\x00" * 8), id="more-dims-than-numpy"),
    ],
)
def test_share_from_proto_rejects(msg: common_pb2.ShareTensor) -> None:
    with pytest.raises(PpmlError) as excinfo:
        serde.share_from_proto(msg, what="input")
    assert _code(excinfo) == ErrorCode.INVALID_SHARE
    assert "input" in str(excinfo.value)


@pytest.mark.parametrize("shape", [(0, 1 << 27), (1 << 27, 0), (0,) * 16, (1,) * 16])
def test_share_from_proto_accepts_empty_and_many_dim_shapes_up_to_the_limits(
    shape: tuple[int, ...],
) -> None:
    size = math.prod(shape)
    msg = _with(shape=list(shape), data=b"\x00" * (8 * size))
    assert serde.share_from_proto(msg).shape == shape


def test_share_from_proto_rejects_element_count_overflow() -> None:
    msg = _with(shape=[1 << 32, 1 << 32], data=b"")
    with pytest.raises(PpmlError) as excinfo:
        serde.share_from_proto(msg)
    assert _code(excinfo) == ErrorCode.INVALID_SHARE


def test_share_from_proto_error_never_echoes_data() -> None:
    secret = (0x1122334455667788).to_bytes(8, "little") * 5
    with pytest.raises(PpmlError) as excinfo:
        serde.share_from_proto(_with(data=secret))
    assert str(0x1122334455667788) not in str(excinfo.value)
    assert "1122334455667788" not in str(excinfo.value).lower()


# ---------------------------------------------------------------- architecture

EVERY_LAYER: list[arch.Layer] = [
    arch.Linear(16, 5),
    arch.Linear(5, 2, bias=False),
    arch.Conv2d(3, 4, (3, 3)),
    arch.Conv2d(4, 6, (3, 1), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2, bias=False),
    arch.ReLU(),
    arch.AvgPool2d((2, 2), (2, 2)),
    arch.AvgPool2d((3, 2), (1, 2), (1, 0)),
    arch.MaxPool2d((2, 2), (2, 2)),
    arch.MaxPool2d((3, 3), (2, 1), (1, 1)),
    arch.Flatten(),
    arch.Affine((4, 1, 1)),
    arch.Affine((7,)),
    arch.Add(),
    arch.Linear(8, 16),  # on the last dim of (tokens, 8) as well
    arch.MatMul(),
    arch.Transpose((1, 0, 2)),
    arch.Reshape((8, 2, 8)),
    arch.Softmax(),
    arch.LayerNorm(16, eps=1e-6),
    arch.GELU(),
    arch.Tanh(),
    arch.Sigmoid(),
    arch.Scale(0.3535533905932738),
    arch.Bias((8, 16)),
    arch.Mean(0),
    arch.Select(0, 3),
    arch.Concat(1),
]


def test_every_layer_type_is_covered() -> None:
    covered = {type(layer) for layer in EVERY_LAYER}
    assert covered == set(arch.Layer.__args__)


@pytest.mark.parametrize("layer", EVERY_LAYER, ids=repr)
def test_layer_round_trip(layer: arch.Layer) -> None:
    msg = serde.layer_to_proto(layer)
    wire = common_pb2.Layer.FromString(msg.SerializeToString())
    back = serde.layer_from_proto(wire, 0)
    assert back == layer
    assert type(back) is type(layer)


def _cnn() -> arch.Architecture:
    return arch.Architecture(
        layers=(
            arch.Conv2d(3, 4, (3, 3), padding=(1, 1)),
            arch.Affine((4, 1, 1)),
            arch.ReLU(),
            arch.MaxPool2d((2, 2), (2, 2)),
            arch.AvgPool2d((2, 2), (2, 2)),
            arch.Flatten(),
            arch.Linear(16, 5),
            arch.ReLU(),
            arch.Linear(5, 2, bias=False),
        ),
        input_shape=(3, 8, 8),
        output_shape=(2,),
    )


def test_architecture_round_trip() -> None:
    a = _cnn()
    msg = common_pb2.Architecture.FromString(serde.architecture_to_proto(a).SerializeToString())
    back = serde.architecture_from_proto(msg)
    assert back == a
    assert back.parameter_shapes() == a.parameter_shapes()
    assert arch.infer_output_shape(back) == (2,)


def _residual() -> arch.Architecture:
    """conv -> relu -> conv, plus the input (identity skip) -> relu -> flatten -> linear."""
    return arch.Architecture(
        layers=(
            arch.Conv2d(2, 2, (3, 3), padding=(1, 1)),
            arch.ReLU(),
            arch.Conv2d(2, 2, (3, 3), padding=(1, 1)),
            arch.Add(),
            arch.ReLU(),
            arch.Flatten(),
            arch.Linear(32, 3),
        ),
        input_shape=(2, 4, 4),
        output_shape=(3,),
        inputs=((-1,), (0,), (1,), (2, -1), (3,), (4,), (5,)),
    )


def test_graph_architecture_round_trip() -> None:
    a = _residual()
    msg = common_pb2.Architecture.FromString(serde.architecture_to_proto(a).SerializeToString())
    back = serde.architecture_from_proto(msg)
    assert back == a and back.inputs == a.inputs
    assert not back.is_chain and _cnn().is_chain
    assert arch.infer_output_shape(back) == (3,)
    assert "Add[2, input]" in back.describe()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (((-1,), (0,), (1,), (2,), (3,), (4,), (5,)), "takes 2 input"),
        (((-1,), (0,), (1,), (2, 5), (3,), (4,), (5,)), "each must be an earlier layer"),
        (((-1,), (0,), (1,), (2, -2), (3,), (4,), (5,)), "each must be an earlier layer"),
        (((-1,), (0,), (1,), (2, -1), (3,), (4,)), "6 input lists for 7 layers"),
        (((-1,), (-1,), (1,), (2, -1), (3,), (4,), (5,)), "output of layer 0 is never used"),
    ],
)
def test_graph_architecture_from_proto_rejects(
    inputs: tuple[tuple[int, ...], ...], message: str
) -> None:
    msg = serde.architecture_to_proto(replace(_residual(), inputs=inputs))
    with pytest.raises(PpmlError, match=message) as excinfo:
        serde.architecture_from_proto(msg)
    assert _code(excinfo) == ErrorCode.INVALID_MODEL


def test_add_of_two_shapes_is_a_shape_error() -> None:
    a = _residual()
    bad = replace(a, layers=(*a.layers[:2], arch.Conv2d(2, 2, (3, 3)), *a.layers[3:]))
    with pytest.raises(ValueError, match=r"layer 3 \(Add\) adds tensors of different shapes"):
        arch.infer_output_shape(bad)


def _arch_msg(**changes: object) -> common_pb2.Architecture:
    msg = serde.architecture_to_proto(_cnn())
    for key, value in changes.items():
        field = getattr(msg, key)
        del field[:]
        field.extend(value)
    return msg


@pytest.mark.parametrize(
    "msg",
    [
        pytest.param(_arch_msg(layers=[]), id="no-layers"),
        pytest.param(_arch_msg(input_shape=[]), id="no-input-shape"),
        pytest.param(_arch_msg(output_shape=[]), id="no-output-shape"),
        pytest.param(_arch_msg(input_shape=[3, 0, 8]), id="zero-input-dim"),
        pytest.param(_arch_msg(output_shape=[-2]), id="negative-output-dim"),
        pytest.param(_arch_msg(layers=[common_pb2.Layer()]), id="layer-without-kind"),
        pytest.param(
            _arch_msg(
                layers=[common_pb2.Layer(linear=common_pb2.Linear(in_features=0, out_features=2))]
            ),
            id="linear-zero-size",
        ),
        pytest.param(
            _arch_msg(
                layers=[
                    common_pb2.Layer(
                        conv2d=common_pb2.Conv2d(
                            in_channels=3,
                            out_channels=4,
                            kernel_size=[3, 3],
                            stride=[1, 1],
                            padding=[0, 0],
                            dilation=[1, 1],
                            groups=2,
                        )
                    )
                ]
            ),
            id="conv-groups-do-not-divide",
        ),
        pytest.param(
            _arch_msg(
                layers=[
                    common_pb2.Layer(
                        conv2d=common_pb2.Conv2d(
                            in_channels=3,
                            out_channels=3,
                            kernel_size=[3],
                            stride=[1, 1],
                            padding=[0, 0],
                            dilation=[1, 1],
                            groups=1,
                        )
                    )
                ]
            ),
            id="conv-kernel-not-a-pair",
        ),
        pytest.param(
            _arch_msg(
                layers=[
                    common_pb2.Layer(
                        max_pool2d=common_pb2.Pool2d(
                            kernel_size=[2, 2], stride=[2, 2], padding=[-1, 0]
                        )
                    )
                ]
            ),
            id="pool-negative-padding",
        ),
    ],
)
def test_architecture_from_proto_rejects(msg: common_pb2.Architecture) -> None:
    with pytest.raises(PpmlError) as excinfo:
        serde.architecture_from_proto(msg)
    assert _code(excinfo) == ErrorCode.INVALID_MODEL


def test_zero_stride_is_an_invalid_model_not_a_crash() -> None:
    msg = _arch_msg(
        layers=[
            common_pb2.Layer(
                max_pool2d=common_pb2.Pool2d(kernel_size=[2, 2], stride=[0, 0], padding=[0, 0])
            )
        ],
        input_shape=[1, 4, 4],
        output_shape=[1, 2, 2],
    )
    try:
        a = serde.architecture_from_proto(msg)
    except PpmlError as err:  # rejecting it already at the wire is fine too
        assert err.code == ErrorCode.INVALID_MODEL
        return
    with pytest.raises(ValueError):
        arch.infer_output_shape(a)


# ---------------------------------------------------------------- named shares


def _expected() -> dict[str, tuple[int, ...]]:
    return _cnn().parameter_shapes()


def _named(shapes: dict[str, tuple[int, ...]]) -> list[common_pb2.NamedShare]:
    return serde.named_shares_to_proto({k: random_ring(v) for k, v in shapes.items()})


def test_named_shares_round_trip() -> None:
    expected = _expected()
    values = {k: random_ring(v) for k, v in expected.items()}
    back = serde.named_shares_from_proto(serde.named_shares_to_proto(values), expected)
    assert list(back) == list(values)
    for name, value in values.items():
        np.testing.assert_array_equal(back[name], value)


def test_named_shares_rejects_missing_parameter() -> None:
    expected = _expected()
    items = _named({k: v for k, v in expected.items() if k != "6.bias"})
    with pytest.raises(PpmlError, match=r"6\.bias") as excinfo:
        serde.named_shares_from_proto(items, expected)
    assert _code(excinfo) == ErrorCode.INVALID_MODEL


def test_named_shares_rejects_extra_parameter() -> None:
    expected = _expected()
    items = _named({**expected, "8.bias": (2,)})
    with pytest.raises(PpmlError, match=r"8\.bias") as excinfo:
        serde.named_shares_from_proto(items, expected)
    assert _code(excinfo) == ErrorCode.INVALID_MODEL


def test_named_shares_rejects_duplicate_parameter() -> None:
    expected = _expected()
    items = _named(expected) + _named({"0.weight": expected["0.weight"]})
    with pytest.raises(PpmlError, match="twice") as excinfo:
        serde.named_shares_from_proto(items, expected)
    assert _code(excinfo) == ErrorCode.INVALID_MODEL


def test_named_shares_rejects_wrong_shape() -> None:
    expected = _expected()
    items = _named({**expected, "6.weight": (16, 5)})  # transposed
    with pytest.raises(PpmlError, match=r"6\.weight") as excinfo:
        serde.named_shares_from_proto(items, expected)
    assert _code(excinfo) == ErrorCode.INVALID_SHARE


def test_named_shares_rejects_invalid_share_inside() -> None:
    expected: dict[str, tuple[int, ...]] = {"0.weight": (2, 3)}
    items = _named(expected)
    items[0].share.fractional_bits = 8
    with pytest.raises(PpmlError) as excinfo:
        serde.named_shares_from_proto(items, expected)
    assert _code(excinfo) == ErrorCode.INVALID_SHARE


# ---------------------------------------------------------------- model metadata


def test_model_meta_round_trip_through_bytes() -> None:
    meta = arch.ModelMeta("model-1.v2", "my cnn", "hospital-a", _cnn(), 1_700_000_000_123)
    data = serde.model_meta_to_bytes(meta)
    assert isinstance(data, bytes)
    back = serde.model_meta_from_bytes(data)
    assert back == meta
    info = registry_pb2.ModelInfo.FromString(data)
    assert (
        info.parameter_count
        == meta.parameter_count
        == sum(int(np.prod(s)) for s in meta.architecture.parameter_shapes().values())
    )


def test_model_meta_proto_round_trip() -> None:
    meta = arch.ModelMeta("m", "", "", _cnn(), 0)
    assert serde.model_meta_from_proto(serde.model_meta_to_proto(meta)) == meta


# ---------------------------------------------------------------- ids


@pytest.mark.parametrize("value", ["a", "model-1", "A.b_c-9", "x" * 64])
def test_check_id_accepts(value: str) -> None:
    assert check_id(value, "model_id") == value


@pytest.mark.parametrize("value", ["", "x" * 65, "a b", "../etc", "a/b", "é", "\nid"])
def test_check_id_rejects(value: str) -> None:
    with pytest.raises(PpmlError) as excinfo:
        check_id(value, "model_id")
    assert _code(excinfo) == ErrorCode.INVALID_ARGUMENT


def test_check_id_rejects_trailing_newline() -> None:
    with pytest.raises(PpmlError) as excinfo:
        check_id("id\n", "model_id")
    assert _code(excinfo) == ErrorCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- control plane

PARTY_MESSAGES: list[cmd.PartyMessage] = [
    cmd.Hello(0, "party", "abc123"),
    cmd.Hello(3, "dealer", ""),
    cmd.Announce("predict", "req-1", "model-1", 4, 30.0),
    cmd.Announce("predict", "r", "m", 1, 0.25),
    cmd.DealerStats({"additive": 40, "wraps": 2}, 3),
    cmd.DealerStats({}, 0),
]


@pytest.mark.parametrize("message", PARTY_MESSAGES, ids=repr)
def test_party_message_round_trip(message: cmd.PartyMessage) -> None:
    wire = coordinator_pb2.PartyMessage.FromString(
        serde.party_message_to_proto(message).SerializeToString()
    )
    assert serde.party_message_from_proto(wire) == message


def test_announce_timeout_is_at_least_one_millisecond() -> None:
    msg = serde.party_message_to_proto(cmd.Announce("predict", "r", "m", 1, 0.0001))
    assert msg.announce.timeout_ms == 1
    back = serde.party_message_from_proto(msg)
    assert isinstance(back, cmd.Announce)
    assert back.timeout_s == pytest.approx(0.001)


def test_announce_timeout_beyond_uint32_milliseconds_is_capped() -> None:
    # a server configured with max_timeout_s above 49 days must still announce
    msg = serde.party_message_to_proto(cmd.Announce("predict", "r", "m", 1, 1e10))
    assert msg.announce.timeout_ms == 2**32 - 1


def test_empty_party_message_is_rejected() -> None:
    with pytest.raises(PpmlError) as excinfo:
        serde.party_message_from_proto(coordinator_pb2.PartyMessage())
    assert _code(excinfo) == ErrorCode.INVALID_ARGUMENT


LEADER_COMMANDS: list[cmd.LeaderCommand] = [
    cmd.JoinEpoch(7, "epoch-7/"),
    cmd.DropRequests(("a", "b"), "deadline passed"),
    cmd.DropRequests((), ""),
    cmd.RunJob(12, 7, "predict", PredictJob("model-1", ("r1", "r2", "r3"), (1, 4, 2))),
    cmd.RunJob(13, 7, "heartbeat", HeartbeatJob()),
    cmd.RunJob(14, 7, "refill", RefillJob("model-1", 64, 2)),
]


@pytest.mark.parametrize("command", LEADER_COMMANDS, ids=repr)
def test_leader_command_round_trip(command: cmd.LeaderCommand) -> None:
    wire = coordinator_pb2.LeaderMessage.FromString(
        serde.leader_command_to_proto(command).SerializeToString()
    )
    assert serde.leader_command_from_proto(wire, kinds.job_types()) == command


def test_empty_leader_message_is_rejected() -> None:
    with pytest.raises(PpmlError) as excinfo:
        serde.leader_command_from_proto(coordinator_pb2.LeaderMessage(), kinds.job_types())
    assert _code(excinfo) == ErrorCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- status


def _report() -> st.StatusReport:
    return st.StatusReport(
        rank=1,
        world_size=3,
        version="0.1.0",
        uptime_s=123.5,
        tls=True,
        serving=True,
        mpc_epoch=4,
        last_error="peer server-2 went away",
        queue_depth=2,
        models_stored=5,
        heartbeats=99,
        requests_total=1234,
        models=[
            st.ModelServing("m1", 12, 4, st.Latency(10, 1.5, 7.25, 9.0), {"INVALID_ARGUMENT": 2}),
            st.ModelServing("m2", 0, 0, st.Latency()),
        ],
        batch_sizes={1: 5, 4: 2, 64: 1},
        mpc_cost=[st.JobCost("predict", 4, 120, 1 << 40), st.JobCost("heartbeat", 99, 99, 0)],
        errors={"OK": 1200, "ABORTED": 34},
        name="server-1",
        grpc_address="10.0.0.2:50051",
        links_up=["leader"],
        dealer_connected=False,
        fast_pool=st.FastPool(6, 21, 6_100_000, 40, 2.5, 30, 3),
    )


def test_status_round_trip() -> None:
    report = _report()
    wire = status_pb2.ServerStatus.FromString(serde.status_to_proto(report).SerializeToString())
    assert serde.status_from_proto(wire) == report
    assert wire.models[0].errors["INVALID_ARGUMENT"] == 2
    assert list(wire.links_up) == ["leader"]


def test_leader_status_round_trip() -> None:
    leader = ["server-1", "server-2", "dealer"]
    report = replace(
        _report(),
        rank=0,
        links_up=leader,
        dealer_connected=True,
        dealer_requests={"additive": 7},
        dealer_sessions=2,
        datasets_stored=3,
        training_jobs={"running": 1, "failed": 2},
    )
    wire = status_pb2.ServerStatus.FromString(serde.status_to_proto(report).SerializeToString())
    assert wire.dealer_connected
    assert serde.status_from_proto(wire) == report


def test_he_status_round_trip() -> None:
    he = st.HeModelServing("poly", 9, 2, 260, st.Latency(7, 80.5, 410.0, 1200.25), 3 << 30, 40_000)
    unknown = st.HeModelServing("(unknown)", 1, 1, 0, st.Latency())
    report = replace(_report(), he_models=[he, unknown], he_contexts={"office-1": 2, "client": 1})
    wire = status_pb2.ServerStatus.FromString(serde.status_to_proto(report).SerializeToString())
    assert serde.status_from_proto(wire) == report
    assert wire.he_models[0].ciphertext_bytes_in == 3 << 30
    assert wire.he_models[0].ciphertext_bytes_out == 40_000
    assert wire.he_models[0].latency.p99_ms == 1200.25
    assert dict(wire.he_contexts) == {"office-1": 2, "client": 1}
    assert (he.ok, unknown.ok) == (7, 0)


def test_model_serving_ok_excludes_errors() -> None:
    serving = st.ModelServing("m", 9, 3, st.Latency(7), {"INVALID_ARGUMENT": 2})
    assert serving.ok == 7


def test_empty_status_round_trip() -> None:
    report = st.StatusReport(0, 2, "", 0.0, False, False, 0, "", 0, 0, 0, 0)
    assert serde.status_from_proto(serde.status_to_proto(report)) == report
