import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run several times faster on one thread than on two cores that others share."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
