import os

import pytest
import torch

# Two cores in CI: keep intra-op threads bounded so parallel test processes do not oversubscribe.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# train.precision=auto measures the CPU at start-up and may pick bf16 where bf16 is fast (AMX): the suite's runs
# would then differ from machine to machine. fp32 everywhere, unmeasured; tests/test_precision*.py cover the
# measurement and the decision (subprocesses, e.g. torchrun's, inherit this).
os.environ.setdefault("OPENJEPA_CPU_PRECISION", "fp32")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
