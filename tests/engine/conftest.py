import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """The engine tests use tiny tensors: one intra-op thread avoids thread hand-off latency on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
