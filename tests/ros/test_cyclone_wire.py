"""Cross-vendor wire check: a raw Cyclone DDS participant (no ROS, none of our code) talks to our Fast DDS nodes.

It uses only what is on the wire: topic `rt/<name>`, type `<pkg>::msg::dds_::<Name>_`, final structs in XCDR1.
"""

import time
from dataclasses import dataclass

import numpy as np
import pytest

cyclonedds = pytest.importorskip("cyclonedds")

from cyclonedds.core import Policy, Qos  # noqa: E402
from cyclonedds.domain import DomainParticipant  # noqa: E402
from cyclonedds.idl import IdlStruct  # noqa: E402
from cyclonedds.idl.types import int32, sequence, uint8, uint32  # noqa: E402
from cyclonedds.pub import DataWriter  # noqa: E402
from cyclonedds.sub import DataReader  # noqa: E402
from cyclonedds.topic import Topic  # noqa: E402


@dataclass
class String_(IdlStruct, typename="std_msgs.msg.dds_.String_"):
    data: str


@dataclass
class Time_(IdlStruct, typename="builtin_interfaces.msg.dds_.Time_"):
    sec: int32
    nanosec: uint32


@dataclass
class Header_(IdlStruct, typename="std_msgs.msg.dds_.Header_"):
    stamp: Time_
    frame_id: str


@dataclass
class Image_(IdlStruct, typename="sensor_msgs.msg.dds_.Image_"):
    header: Header_
    height: uint32
    width: uint32
    encoding: str
    is_bigendian: uint8
    step: uint32
    data: sequence[uint8]


CYCLONE_XML = """<CycloneDDS><Domain id="any">
  <General><Interfaces><NetworkInterface address="127.0.0.1"/></Interfaces><AllowMulticast>false</AllowMulticast></General>
  <Discovery><ParticipantIndex>auto</ParticipantIndex><MaxAutoParticipantIndex>60</MaxAutoParticipantIndex>
    <Peers><Peer address="127.0.0.1"/></Peers></Discovery>
</Domain></CycloneDDS>"""


def wait_for(reader, timeout: float, poke=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if poke:
            poke()
        samples = reader.take(N=10)
        if samples:
            return samples
        time.sleep(0.2)
    raise AssertionError(f"nothing arrived on {reader.topic.name} within {timeout} s")


def test_cyclone_peer_exchanges_string_and_image(spawn, vlm_dir, domain_id, monkeypatch):
    spawn("encoder_node", {"model": str(vlm_dir)})
    spawn("planner_node", {"model": str(vlm_dir), "max_new_tokens": 4})
    monkeypatch.setenv("CYCLONEDDS_URI", CYCLONE_XML)
    participant = DomainParticipant(domain_id)
    reliable = Qos(Policy.Reliability.Reliable(max_blocking_time=1_000_000_000), Policy.History.KeepLast(10),
                   Policy.DataRepresentation(use_cdrv0_representation=True))
    image_writer = DataWriter(participant, Topic(participant, "rt/camera/image_raw", Image_), qos=reliable)
    tokens_reader = DataReader(participant, Topic(participant, "rt/agent/visual_tokens", Image_), qos=reliable)
    query_writer = DataWriter(participant, Topic(participant, "rt/agent/query", String_), qos=reliable)
    answer_reader = DataReader(participant, Topic(participant, "rt/agent/answer", String_), qos=reliable)

    pixels = np.arange(32 * 48 * 3, dtype=np.uint8)
    frame = Image_(Header_(Time_(0, 0), "cyclone_cam"), 32, 48, "rgb8", 0, 48 * 3, pixels.tolist())
    tokens = wait_for(tokens_reader, 60, poke=lambda: image_writer.write(frame))
    sample = tokens[-1]
    assert sample.header.frame_id == "cyclone_cam" and sample.encoding == "32FC1" and sample.height == 16
    values = np.frombuffer(bytes(sample.data), "<f4").reshape(sample.height, sample.width)
    assert np.isfinite(values).all() and values.std() > 0

    answers = wait_for(answer_reader, 60, poke=lambda: query_writer.write(String_("What do you see?")))
    assert isinstance(answers[0].data, str)
    print(f"cyclone <-> fast dds: tokens {sample.height}x{sample.width}, answer {answers[0].data!r}")
