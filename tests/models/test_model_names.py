"""Model names and kwargs: timm-style KEY=VALUE parsing, NAME[key=value,...] specs, one-line errors."""
import pytest

from linglo.errors import LingloError
from linglo.models.names import check_model_name, parse_kwargs, split_model_spec, split_top_level


def test_parse_kwargs_reads_python_literals_else_strings():
    got = parse_kwargs(["window=3", "token_mixer=softmax", "axial=True", "widths=(16, 32)", "ls_init=None",
                        "mlp_ratio=3.5"])
    assert got == {"window": 3, "token_mixer": "softmax", "axial": True, "widths": (16, 32), "ls_init": None,
                   "mlp_ratio": 3.5}


@pytest.mark.parametrize("item", ["window", "=3", "two words=1"])
def test_parse_kwargs_rejects_items_without_a_key(item):
    with pytest.raises(LingloError, match="KEY=VALUE"):
        parse_kwargs([item])


def test_model_spec_splits_name_and_kwargs():
    import linglo  # noqa: F401
    assert split_model_spec("linglo_t") == ("linglo_t", {})
    assert split_model_spec("linglo_t[token_mixer=softmax,widths=(16,32,64,128)]") == (
        "linglo_t", {"token_mixer": "softmax", "widths": (16, 32, 64, 128)})
    assert split_top_level("linglo_t[a=1,b=2],convnext_atto, linglo_s") == [
        "linglo_t[a=1,b=2]", "convnext_atto", "linglo_s"]


@pytest.mark.parametrize("spec, message", [("linglo_x[window=3]", "unknown model 'linglo_x'"),
                                           ("linglo_t[window=3", "expected NAME or NAME"),
                                           ("linglo_t[window]", "KEY=VALUE")])
def test_bad_model_specs(spec, message):
    import linglo  # noqa: F401
    with pytest.raises(LingloError, match=message.replace("[", r"\[")):
        split_model_spec(spec)


def test_unknown_name_suggests_close_ones():
    import linglo  # noqa: F401
    with pytest.raises(LingloError, match="did you mean: .*linglo_t"):
        check_model_name("linglo_tt")


def test_create_model_leaves_out_recipe_arguments_the_model_does_not_take(capsys):
    """EfficientViT-B has no drop_path_rate: the recipe's drop path is left out with a warning, not a crash;
    an argument that is not optional still fails."""
    from linglo.models.names import create_model
    model = create_model("efficientvit_b0", {"drop_path_rate": 0.1}, num_classes=3)
    assert model.num_classes == 3
    assert "takes no 'drop_path_rate'" in capsys.readouterr().out
    with pytest.raises(TypeError):
        create_model("efficientvit_b0", {"drop_path_rate": 0.1}, no_such_arg=1)
