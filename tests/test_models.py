"""helpers.models: the corrected source CNN and Hinton et al.'s MLPs."""
import pytest
import torch

from helpers.models import CNN, MLP


def test_cnn_is_the_source_network_for_28x28():
    model = CNN()
    assert [m.out_channels for m in (model.conv1, model.conv2)] == [16, 32]
    assert model.fc1.in_features == 32 * 7 * 7 and model.fc1.out_features == 10
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    # 16*(1*9+1) + 32*(16*9+1) + 10*(1568+1)
    assert sum(p.numel() for p in model.parameters()) == 160 + 4640 + 15690


def test_cnn_width_and_size_are_configurable():
    student = CNN(channels=(8, 16))
    assert student.fc1.in_features == 16 * 7 * 7
    wide = CNN(channels=(32, 64), num_classes=5, in_channels=3, image_size=32)
    assert wide(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_cnn_rejects_the_source_documents_32x32_input_clearly():
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 28, 28\), got \(1, 1, 32, 32\)"):
        CNN()(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize("kwargs, name", [
    ({"channels": (0, 32)}, "channels"), ({"channels": (16,)}, "channels"),
    ({"num_classes": 1}, "num_classes"), ({"image_size": 30}, "image_size"),
    ({"in_channels": 0}, "in_channels"),
])
def test_cnn_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CNN(**kwargs)


def test_mlp_sizes_match_hinton_et_al():
    teacher, student = MLP((1200, 1200)), MLP((800, 800))
    assert [layer.out_features for layer in teacher.linear_layers()] == [1200, 1200, 10]
    assert [layer.in_features for layer in student.linear_layers()] == [784, 800, 800]
    assert student(torch.zeros(4, 1, 28, 28)).shape == (4, 10)
    assert student(torch.zeros(4, 784)).shape == (4, 10)


def test_mlp_dropout_adds_layers_but_not_parameters():
    plain, dropped = MLP((32,)), MLP((32,), dropout=0.5)
    assert len(dropped.layers) == len(plain.layers) + 1
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in dropped.parameters())


def test_mlp_rejects_wrong_input_and_arguments():
    with pytest.raises(ValueError, match="784 values"):
        MLP((16,))(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="hidden"):
        MLP(())
    with pytest.raises(ValueError, match="dropout"):
        MLP((16,), dropout=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        MLP((16,), num_classes=0)
