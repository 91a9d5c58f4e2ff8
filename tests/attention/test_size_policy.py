"""The shared size policy of size-bound modules (attention/size_policy.py)."""
import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.size_policy import (
    adaptive_pool_matrix,
    check_grid_size,
    check_size_policy,
    fit_to_grid,
    resize_from_grid,
)


@pytest.mark.parametrize('size,grid', [((7, 9), (7, 7)), ((13, 17), (7, 5)), ((1, 1), (7, 7)),
                                       ((56, 56), (7, 7)), ((3, 2), (7, 7)), ((5, 6), (1, 1))])
def test_pooling_is_adaptive_average_pooling(size, grid):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(fit_to_grid(x, grid, 'pool', 'M'), F.adaptive_avg_pool2d(x, grid),
                               rtol=0, atol=1e-14)


@pytest.mark.parametrize('size,grid', [((7, 9), (7, 7)), ((13, 17), (7, 5)), ((1, 1), (7, 7)),
                                       ((3, 2), (7, 7))])
def test_traced_pooling_is_the_matrix_form_with_the_same_values(size, grid):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    traced = torch.jit.trace(lambda t: fit_to_grid(t, grid, 'pool', 'M'), x)
    assert 'adaptive_avg_pool2d' not in str(traced.graph)
    torch.testing.assert_close(traced(x), F.adaptive_avg_pool2d(x, grid), rtol=0, atol=1e-14)


def test_pool_matrix_rows_are_the_windows():
    # 5 values to 3: windows [0, 2), [1, 4), [3, 5) (floor(i n / g) to ceil((i + 1) n / g))
    expected = torch.tensor([[1 / 2, 1 / 2, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0],
                             [0, 0, 0, 1 / 2, 1 / 2]], dtype=torch.float64)
    assert torch.equal(adaptive_pool_matrix(5, 3, torch.float64, torch.device('cpu')), expected)


def test_the_grid_size_itself_is_untouched():
    x = torch.randn(2, 3, 7, 5)
    assert fit_to_grid(x, (7, 5), 'pool', 'M') is x
    assert fit_to_grid(x, (7, 5), 'strict', 'M') is x
    a = torch.rand(2, 1, 7, 5)
    assert resize_from_grid(a, (7, 5)) is a


def test_strict_names_the_module_and_both_sizes():
    with pytest.raises(ValueError, match=r"FCA with size_policy='strict' was built for 56x56 "
                       r'maps .* but got 28x30'):
        fit_to_grid(torch.randn(1, 2, 28, 30), (56, 56), 'strict', 'FCA')


def test_resize_back_is_bilinear():
    a = torch.rand(2, 1, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(
        resize_from_grid(a, (13, 17)),
        F.interpolate(a, size=(13, 17), mode='bilinear', align_corners=False))


def test_arguments():
    assert check_grid_size('M', 7) == (7, 7)
    assert check_grid_size('M', [7, 5]) == (7, 5)
    for bad in (0, (7, ), (7, 0), 7.0, True, '7'):
        with pytest.raises(ValueError, match='M: grid_size'):
            check_grid_size('M', bad)
    assert check_size_policy('M', 'strict') == 'strict'
    with pytest.raises(ValueError, match=r"M: size_policy must be one of \('pool', 'strict'\)"):
        check_size_policy('M', 'crop')


def test_onnx_exports_pooling_to_a_grid_that_does_not_divide_the_map(tmp_path):
    import onnxruntime as ort

    class Pool(torch.nn.Module):
        def forward(self, x):
            return fit_to_grid(x, (7, 7), 'pool', 'M')

    x = torch.randn(1, 2, 9, 11)
    path = str(tmp_path / 'pool.onnx')
    torch.onnx.export(Pool(), (x, ), path, opset_version=17, dynamo=False)
    (y, ) = ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(
        None, {ort.InferenceSession(path).get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), F.adaptive_avg_pool2d(x, 7))
