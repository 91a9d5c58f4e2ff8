"""Fixtures shared by the test folders."""
import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Run the test on one torch thread: on a 2-core machine the small models of the tests
    run faster so, a second thread mostly waiting for the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def restore_default_scope():
    """mmengine's Runner makes its default scope the current one for the whole process; a
    test that builds a Runner would change the scope of the tests after it."""
    from mmengine.registry import DefaultScope
    instances = dict(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(instances)
