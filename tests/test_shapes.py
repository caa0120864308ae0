"""The shape checker: binds named dimensions and names the equation and dimension that disagree."""

import pytest
import torch

from minipeft.shapes import Dims, ShapeError, check_shape


def test_binds_dimensions_across_tensors():
    dims = Dims("F6.1 LoRA")
    dims.check("x", torch.zeros(2, 5, 16), "B T C")
    dims.check("A", torch.zeros(4, 16), "r C")
    assert dims.sizes == {"B": 2, "T": 5, "C": 16, "r": 4}


def test_disagreement_names_equation_tensor_and_dimension():
    dims = Dims("F6.1 LoRA")
    dims.check("x", torch.zeros(2, 5, 16), "B T C")
    with pytest.raises(ShapeError) as error:
        dims.check("A", torch.zeros(4, 12), "r C")
    message = str(error.value)
    assert "F6.1 LoRA" in message and "A has shape (4, 12)" in message
    assert "dimension C is 12 but 16 was expected (x)" in message


def test_known_sizes_and_literals():
    with pytest.raises(ShapeError, match="dimension D is 32 but 64 was expected \\(given\\)"):
        check_shape(torch.zeros(2, 8, 5, 32), "B H T D", "F5.4", name="query", D=64)
    with pytest.raises(ShapeError, match="a dimension is 3 but 1 was expected"):
        check_shape(torch.zeros(2, 3), "B 1", "eq")


def test_rank_and_leading_ellipsis():
    assert check_shape(torch.zeros(2, 3, 4, 16), "... C", "eq", C=16).shape == (2, 3, 4, 16)
    with pytest.raises(ShapeError, match="it has 2 dimensions, the equation needs 3"):
        check_shape(torch.zeros(2, 3), "B T C", "eq")
    with pytest.raises(ShapeError, match="it has 1 dimensions, the equation needs 2"):
        check_shape(torch.zeros(2), "... T C", "eq")
