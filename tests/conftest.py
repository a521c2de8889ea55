import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tools"))  # bench, report, apply_preset: the tools apart from the stages
sys.path.insert(0, str(ROOT / "tests"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a minute (CI still runs it)")
    config.addinivalue_line("markers", "cross_processor: compares floats computed in other batch shapes or processes; "
                                       "CI runs these once more on other kernels (ATEN_CPU_CAPABILITY=avx2)")


@pytest.fixture(scope="module")
def one_thread():
    """Small convs on a shared 2-core box: 2 OpenMP threads were ~50x slower than 1 here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
