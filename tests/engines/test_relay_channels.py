"""Which channel a relay's create goes to, and the circuit breaker, with a clock of our own."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from opendance.config import load_models
from opendance.engines.options import ChannelOptions, RelayOptions
from opendance.engines.relay.channels import ChannelBoard


def channel(name: str, **kw) -> ChannelOptions:
    return ChannelOptions(name=name, protocol="legacy", base_url=f"http://{name}.example", upstream_model="m", **kw)


def test_priority_first_then_weight_among_equals():
    board = ChannelBoard()
    a, b, c = channel("a", weight=3), channel("b", weight=1), channel("c", priority=1)
    rng = random.Random(7)
    firsts = Counter(board.order([a, b, c], rng)[0].id for _ in range(4000))
    assert set(firsts) == {"a", "b"}  # c only after both of priority 0
    assert 0.70 < firsts["a"] / 4000 < 0.80  # 3:1
    assert all(board.order([a, b, c], rng)[-1].id == "c" for _ in range(50))


def test_the_breaker_opens_cools_down_and_closes():
    now = [100.0]
    board = ChannelBoard(failures=3, cooldown=30.0, clock=lambda: now[0])
    a, b = channel("a"), channel("b", priority=1)
    for _ in range(2):
        board.record("a", "create", 0.1, "HTTP 503")
    assert board.state("a") == "closed" and board.order([a, b])[0].id == "a"
    board.record("a", "status", 0.1, "HTTP 502")  # every request counts
    assert board.state("a") == "open" and [c.id for c in board.order([a, b])] == ["b"]
    now[0] += 30.0
    assert board.state("a") == "half-open" and board.order([a, b])[0].id == "a"
    board.claim("a")  # one trial at a time
    assert [c.id for c in board.order([a, b])] == ["b"]
    board.record("a", "create", 0.1, "cannot be reached")  # the trial failed: open again
    assert board.state("a") == "open"
    now[0] += 30.0
    board.claim("a")
    board.record("a", "create", 0.1, None)
    assert board.state("a") == "closed" and board.health("a").in_a_row == 0
    described = board.describe()["a"]
    assert (described["requests"], described["failures"], described["state"]) == (5, 4, "closed")


def test_fewer_failures_in_a_row_first_and_all_open_tries_the_first_to_reopen():
    now = [0.0]
    board = ChannelBoard(failures=2, cooldown=10.0, clock=lambda: now[0])
    a, b = channel("a"), channel("b")
    board.record("a", "create", 0.1, "HTTP 500")
    assert [c.id for c in board.order([a, b])] == ["b", "a"]
    board.record("a", "create", 0.1, "HTTP 500")
    now[0] = 5.0
    board.record("b", "create", 0.1, "HTTP 500")
    board.record("b", "create", 0.1, "HTTP 500")
    assert [c.id for c in board.order([a, b])] == ["a"]  # both open: a reopens first


def test_channel_options_in_the_models_file(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(
        '[models."r"]\nresolution = "480p"\n[models."r".default]\nengine = "relay"\n'
        '[[models."r".default.channels]]\nprotocol = "legacy"\nbase_url = "http://one:1"\nupstream_model = "m"\n'
        '[[models."r".default.channels]]\nprotocol = "ark"\nbase_url = "http://two:2/api/v3"\nupstream_model = "m"\n'
        "priority = 1\nweight = 2.5\n"
    )
    spec = load_models(path)["r"].modes
    opts = RelayOptions(**{"engine": "relay", **next(iter(spec.values())).options})
    assert [(c.id, c.protocol, c.priority, c.weight) for c in opts.channels] == [
        ("one:1", "legacy", 0, 1.0),
        ("two:2", "ark", 1, 2.5),
    ]
    assert RelayOptions(engine="relay", protocol="legacy", base_url="http://x:3", upstream_model="m").channels[0].id == "x:3"


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (
            'protocol = "legacy"\n[[models."r".default.channels]]\nprotocol = "legacy"\nbase_url = "http://a"\nupstream_model = "m"\n',
            "give either channels or protocol (one upstream), not both",
        ),
        (
            '[[models."r".default.channels]]\nprotocol = "legacy"\nbase_url = "http://a"\nupstream_model = "m"\n'
            '[[models."r".default.channels]]\nprotocol = "openai"\nbase_url = "http://a"\nupstream_model = "n"\n',
            "channel names must differ",
        ),
        (
            '[[models."r".default.channels]]\nprotocol = "legacy"\nbase_url = "http://a"\nupstream_model = "m"\nweight = 0\n',
            "channels.0.weight: Input should be greater than 0",
        ),
        (
            '[[models."r".default.channels]]\nprotocol = "legacy"\nbase_url = "http://a"\nupstream_model = "m"\nretries = 3\n',
            "channels.0.retries: Extra inputs are not permitted",
        ),
    ],
)
def test_bad_channels_are_refused_naming_the_key(tmp_path, table, problem):
    path = tmp_path / "models.toml"
    path.write_text('[models."r"]\nresolution = "480p"\n[models."r".default]\nengine = "relay"\n' + table)
    with pytest.raises(ValueError, match=r"models\.r \(text-to-video, engine relay\)") as caught:
        load_models(path)
    assert problem in str(caught.value)
