"""Mesh construction from the config and logical names on every parameter (8 CPU devices)."""

import jax
import pytest
from flax import nnx
from jax.sharding import AxisType

from cosmos_jax import sharding
from cosmos_jax.models import build
from cosmos_jax.models.dit import DiffusionNet
from tests.conftest import tiny_dit_config


def test_resolve_fills_minus_one():
    assert sharding.resolve_mesh_shape((("data", 1), ("fsdp", -1), ("context", 1)), 8) == (
        ("data", 1), ("fsdp", 8), ("context", 1))
    assert sharding.resolve_mesh_shape((("data", 2), ("fsdp", -1), ("context", 2)), 8)[1] == ("fsdp", 2)


@pytest.mark.parametrize("spec,msg", [
    ((("data", 1), ("fsdp", -1), ("context", -1)), "at most one"),
    ((("data", 3), ("fsdp", -1), ("context", 1)), "not divisible"),
    ((("data", 2), ("fsdp", 2), ("context", 1)), "needs 4 devices, 8 present"),
    ((("data", 1), ("model", -1), ("context", 1)), "expected each of"),
])
def test_bad_mesh_is_explained(spec, msg):
    with pytest.raises(ValueError, match=msg):
        sharding.resolve_mesh_shape(spec, 8)


def test_mesh_uses_auto_axes():
    assert len(jax.devices()) == 8
    mesh = sharding.make_mesh((("data", 2), ("fsdp", -1), ("context", 2)))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "context": 2}
    assert all(t == AxisType.Auto for t in mesh.axis_types)


def test_every_param_has_logical_names_that_resolve():
    model = build.abstract(tiny_dit_config())
    flat = nnx.to_flat_state(nnx.state(model))
    known = {name for name, _ in sharding.LOGICAL_RULES}
    for path, var in flat:
        names = var.get_metadata().get("out_sharding")
        if isinstance(var, nnx.Param):
            assert names is not None and len(names) == len(var.get_value().shape), path
            assert set(n for n in names if n is not None) <= known, (path, names)
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("context", 2)))
    with sharding.activate(mesh):
        abstract = nnx.eval_shape(lambda: DiffusionNet(tiny_dit_config(), rngs=nnx.Rngs(0)))
        state = nnx.state(abstract, nnx.Param)
        specs = {p: v.get_value().sharding.spec for p, v in nnx.to_flat_state(state)}
    assert specs[("net", "blocks", "mlp", "mlp", "layer1", "kernel")] == jax.sharding.PartitionSpec(
        None, ("fsdp", "context"), None)
