"""The numpy noise generator against torch's CPU generator (the oracle diffusers uses)."""

import time

import numpy as np
import pytest
import torch

from seer.errors import UsageError
from seer.runtime.noise import randn


@pytest.mark.parametrize("shape", [(16,), (17,), (33,), (1000,), (1, 64, 16), (2, 256, 64), (1, 4, 32, 48)])
@pytest.mark.parametrize("seed", [0, 1, 42, 2**31 + 5, 2**40 + 3])
def test_matches_torch_cpu_generator(shape, seed):
    expected = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32).numpy()
    # float32 log/cos/sin may round differently from torch's kernels: a few ulp, nothing more
    np.testing.assert_allclose(randn(shape, seed), expected, rtol=0, atol=2e-6)


def test_fast_enough_and_refuses_tiny_draws():
    t = time.perf_counter()
    randn((1, 16, 128, 128), 0)
    assert time.perf_counter() - t < 1.0
    with pytest.raises(UsageError):
        randn((3,), 0)
