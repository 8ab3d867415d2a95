"""The batch partitioner puts every key where Kafka's default partitioner puts it."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from racer_online.kafka import partitioning

# org.apache.kafka.common.utils.UtilsTest.testMurmur2: the Java client's own values.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_murmur2_equals_the_java_clients() -> None:
    hashes = partitioning.murmur2(list(JAVA_MURMUR2)).astype("int64")
    signed = [h - (1 << 32) if h >= 1 << 31 else h for h in hashes.tolist()]
    assert signed == list(JAVA_MURMUR2.values())


@given(
    keys=st.lists(st.binary(max_size=70), max_size=60),
    n_partitions=st.integers(min_value=1, max_value=64),
)
def test_partitions_equal_aiokafkas_default_partitioner(
    keys: list[bytes], n_partitions: int
) -> None:
    # Keys of mixed lengths in one batch (each length is hashed as a group), the empty key,
    # and lengths with every remainder modulo 4.
    every = list(range(n_partitions))
    expected = [DefaultPartitioner()(key, every, every) for key in keys]
    assert partitioning.partitions(keys, n_partitions) == expected
