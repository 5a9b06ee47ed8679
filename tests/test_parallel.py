"""ddpm_data.parallel: ordered results, bounded run-ahead, clean shutdown on an error."""
from __future__ import annotations

import threading

import pytest

from ddpm_data.parallel import OrderedPool


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("workers", [0, 2])
def test_results_come_back_in_input_order(workers):
    with OrderedPool(workers) as pool:
        assert list(pool.map(_square, range(50), chunksize=3, in_flight=4)) == [x * x for x in range(50)]
        assert list(pool.map(_square, range(10), chunksize=4)) == [x * x for x in range(10)]


def test_input_is_consumed_only_in_flight_ahead():
    handed_out = []

    def items():
        for x in range(100):
            handed_out.append(x)
            yield x

    with OrderedPool(2) as pool:
        stream = pool.map(_square, items(), in_flight=4)
        assert next(stream) == 0
        threading.Event().wait(0.3)  # give the feeder every chance to run ahead
        assert len(handed_out) <= 1 + 4 + 1


def test_abandoning_a_stream_does_not_hang_shutdown():
    with pytest.raises(RuntimeError):
        with OrderedPool(2) as pool:
            for value in pool.map(_square, range(1000), in_flight=2):
                if value > 10:
                    raise RuntimeError("consumer failed")
