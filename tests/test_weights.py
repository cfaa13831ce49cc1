"""Pretrained weights and data without a network: `model.weights` state_dict files, CIFAR's python
batches read from a folder, and the `requires: [network]` check that knows about both."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm

from ssbench.data import load_data
from ssbench.data.sources import load_cifar10, load_cifar100, on_disk
from ssbench.errors import CheckpointError, DataNotFoundError, SpecError, SsbenchError
from ssbench.models import LeNet, build_model
from ssbench.specs import DataSpec, ModelSpec, OptimSpec, TrainSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def _resnet18_file(path: Path, *, seed: int = 0, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = tvm.resnet18(weights=None, num_classes=num_classes).state_dict()
    torch.save(state, path)
    return state


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, SsbenchError)
    return msg


# -- model.weights ------------------------------------------------------------------------------

def test_resnet18_weights_file_loads_backbone_and_resizes_head(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    state = _resnet18_file(path)
    torch.manual_seed(123)  # another draw than the file's: equal tensors can only come from the file
    model = build_model(ModelSpec(name="resnet18", weights=path), num_classes=10, in_channels=3, image_size=32)
    got = model.state_dict()
    backbone = [k for k in state if not k.startswith("fc.")]
    assert len(backbone) > 100 and set(got) == set(state)
    for k in backbone:
        assert torch.equal(got[k], state[k]), k
    assert model.fc.weight.shape == (10, 512) and model.fc.bias.shape == (10,)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # the same build without the file is a fresh initialisation: the comparison above could fail
    torch.manual_seed(123)
    fresh = build_model(ModelSpec(name="resnet18"), num_classes=10, in_channels=3, image_size=32).state_dict()
    assert not torch.equal(fresh["conv1.weight"], state["conv1.weight"])


def test_head_of_the_right_shape_is_kept_and_wrapped_layouts_load(tmp_path: Path) -> None:
    state = _resnet18_file(tmp_path / "bare.pth", num_classes=10)
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "sd.pth")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {}}, tmp_path / "ddp.pth")
    for name in ("bare.pth", "sd.pth", "ddp.pth"):
        model = build_model(ModelSpec(name="resnet18", weights=tmp_path / name), num_classes=10, in_channels=3, image_size=32)
        assert torch.equal(model.fc.weight, state["fc.weight"]), name  # 10 outputs, 10 classes: kept
        assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"]), name


def test_weights_of_another_architecture_are_one_line(tmp_path: Path) -> None:
    # vgg16's keys, not its 138M parameters: the names decide, and a real file would take seconds to write
    with torch.device("meta"):
        keys = list(tvm.vgg16(weights=None).state_dict())
    path = tmp_path / "vgg16.pth"
    torch.save({k: torch.zeros(1) for k in keys}, path)
    with pytest.raises(CheckpointError) as err:
        build_model(ModelSpec(name="resnet18", weights=path), num_classes=10, in_channels=3, image_size=32)
    msg = _one_line(err)
    assert msg.startswith(f"weights {path} do not fit resnet18: missing conv1.weight, bn1.weight, bn1.bias, ...")
    assert "unexpected features.0.weight, features.0.bias, features.2.weight, ..." in msg


def test_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    state = _resnet18_file(tmp_path / "r.pth")
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    state["fc.weight"] = torch.zeros(1000, 256)  # the head's input side belongs to the backbone
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        build_model(ModelSpec(name="resnet18", weights=tmp_path / "bad.pth"), num_classes=10, in_channels=3, image_size=32)
    msg = _one_line(err)
    assert "other shapes layer1.0.conv1.weight 64x64x1x1 (the network's 64x64x3x3)" in msg
    assert "fc.weight 1000x256 (the network's 10x512" in msg and "missing" not in msg


def test_bad_weights_files_are_one_line(tmp_path: Path) -> None:
    spec = ModelSpec(name="resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(CheckpointError) as err:
        build_model(spec, num_classes=10, in_channels=3, image_size=32)
    msg = _one_line(err)
    assert f"weights {tmp_path / 'nope.pth'} not found" in msg and "resnet18-f37072fd.pth" in msg
    (tmp_path / "text.pth").write_text("not a torch file")
    with pytest.raises(CheckpointError, match="not a torch file readable with weights_only=True") as err:
        build_model(spec.replace(weights=tmp_path / "text.pth"), num_classes=10, in_channels=3, image_size=32)
    _one_line(err)
    torch.save({"format": "ssbench-checkpoint/1", "state_dict": {}}, tmp_path / "ours.pt")
    with pytest.raises(CheckpointError, match=r"is an ssbench checkpoint.*finetune --from") as err:
        build_model(spec.replace(weights=tmp_path / "ours.pt"), num_classes=10, in_channels=3, image_size=32)
    torch.save({"lr": 0.1, "epochs": 3}, tmp_path / "noweights.pt")
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        build_model(spec.replace(weights=tmp_path / "noweights.pt"), num_classes=10, in_channels=3, image_size=32)
    _resnet18_file(tmp_path / "r.pth")
    with pytest.raises(SpecError, match="channels=3") as err:
        build_model(spec.replace(weights=tmp_path / "r.pth"), num_classes=10, in_channels=1, image_size=32)
    _one_line(err)


def test_our_models_take_a_state_dict_of_their_own_architecture(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = LeNet(10, 1, 28)
    torch.save(src.state_dict(), tmp_path / "lenet.pth")
    model = build_model(ModelSpec(name="lenet", weights=tmp_path / "lenet.pth"), num_classes=5, in_channels=1, image_size=28)
    for k, v in src.state_dict().items():
        if not k.startswith("fc2."):
            assert torch.equal(model.state_dict()[k], v), k
    assert model.fc2.weight.shape == (5, 84)
    with pytest.raises(CheckpointError, match="do not fit mlp: missing body.fc1.weight, ") as err:
        build_model(ModelSpec(name="mlp", weights=tmp_path / "lenet.pth"), num_classes=5, in_channels=1, image_size=28)
    _one_line(err)


def test_finetune_from_a_weights_file_end_to_end_and_rebuilt_without_it(tmp_path: Path, sqlite_store) -> None:  # noqa: ANN001
    from ssbench.training import load_trained, run_training

    path = tmp_path / "resnet18.pth"
    state = _resnet18_file(path)
    spec = TrainSpec(
        kind="finetune", model=ModelSpec(name="resnet18", weights=path),
        data=DataSpec(name="digits", channels=3, image_size=32, train_limit=64, test_limit=32),
        optim=OptimSpec(lr=1e-12), epochs=1, batch_size=32, select="last",
    )
    run_id = run_training(spec, sqlite_store, quiet=True)
    run = sqlite_store.get_run(run_id)
    assert run.status == "finished" and run.kind == "finetune" and run.summary["test_accuracy"] >= 0.0
    assert run.config["model"]["weights"] == str(path)
    path.unlink()  # the checkpoint holds the weights: rebuilding must not look for the file
    trained = load_trained(sqlite_store, run_id)
    conv1 = dict(trained.model.named_parameters())["net.conv1.weight"]
    torch.testing.assert_close(conv1, state["conv1.weight"], rtol=0, atol=1e-9)  # lr ~ 0: the file's weights
    assert trained.model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


# -- CIFAR python batches -----------------------------------------------------------------------

def _batch(path: Path, n: int, seed: int, labels_key: bytes = b"labels", classes: int = 10) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, classes, size=n)]
    with path.open("wb") as f:
        pickle.dump({b"batch_label": b"synthetic", labels_key: labels, b"data": data,
                     b"filenames": [b"x.png"] * n}, f, protocol=2)
    return data, labels


def _cifar10(folder: Path) -> tuple[list[np.ndarray], list[list[int]], np.ndarray, list[int]]:
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _batch(folder / f"data_batch_{i}", 4, i)
        xs.append(x)
        ys.append(y)
    tx, ty = _batch(folder / "test_batch", 3, 9)
    names = [f"class{i}".encode() for i in range(10)]
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    return xs, ys, tx, ty


def test_cifar10_python_batches_from_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "c10" / "cifar-10-batches-py"
    xs, ys, tx, ty = _cifar10(folder)
    for given in (folder, folder.parent):  # the folder itself or its parent
        raw = load_cifar10(DataSpec(name="cifar10", data_dir=given, download=False))
        assert raw.train_images.shape == (20, 3, 32, 32) and raw.train_images.dtype == torch.uint8
        assert raw.test_images.shape == (3, 3, 32, 32) and raw.test_images.dtype == torch.uint8
        assert raw.train_labels.tolist() == sum(ys, []) and raw.test_labels.tolist() == ty
        assert raw.train_labels.dtype == torch.int64
        assert raw.class_names == [f"class{i}" for i in range(10)]
        # row 5 is batch 2's row 1 (4 rows a batch); pixel (c, h, w) is byte c*1024 + h*32 + w of its row (R, G, B planes)
        assert raw.train_images[5, 2, 5, 7].item() == xs[1][1, 2 * 1024 + 5 * 32 + 7]
        assert torch.equal(raw.test_images.reshape(3, -1), torch.from_numpy(tx))
    bundle = load_data(DataSpec(name="cifar10", data_dir=folder.parent, download=False, val_fraction=0.0))
    assert bundle.num_classes == 10 and len(bundle.train) == 20 and bundle.in_channels == 3 and bundle.image_size == 32


def test_cifar10_under_ssbench_data_and_cifar100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSBENCH_DATA", str(tmp_path / "data"))
    _cifar10(tmp_path / "data" / "cifar10" / "cifar-10-batches-py")
    assert on_disk(DataSpec(name="cifar10")) and not on_disk(DataSpec(name="cifar100"))
    assert load_cifar10(DataSpec(name="cifar10", download=False)).train_images.shape[0] == 20
    c100 = tmp_path / "data" / "cifar100" / "cifar-100-python"
    c100.mkdir(parents=True)
    _, y = _batch(c100 / "train", 7, 1, b"fine_labels", 100)
    _, ty = _batch(c100 / "test", 5, 2, b"fine_labels", 100)
    with (c100 / "meta").open("wb") as f:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}, f, protocol=2)
    raw = load_cifar100(DataSpec(name="cifar100", download=False))
    assert raw.train_images.shape == (7, 3, 32, 32) and raw.train_labels.tolist() == y and raw.test_labels.tolist() == ty
    assert len(raw.class_names) == 100 and raw.class_names[42] == "f42"


def test_missing_cifar_is_one_line_naming_path_and_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError) as err:
        load_cifar10(DataSpec(name="cifar10", data_dir=tmp_path / "empty", download=False))
    msg = _one_line(err)
    assert str(tmp_path / "empty" / "cifar-10-batches-py") in msg
    assert "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch, batches.meta" in msg
    _cifar10(tmp_path / "part")
    (tmp_path / "part" / "test_batch").unlink()
    with pytest.raises(DataNotFoundError) as err:
        load_cifar10(DataSpec(name="cifar10", data_dir=tmp_path / "part", download=False))
    assert f"{tmp_path / 'part'} lacks test_batch" in _one_line(err)


def test_a_batch_that_would_run_code_is_refused_not_run(tmp_path: Path) -> None:
    folder = tmp_path / "c10"
    _cifar10(folder)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (Path.touch, (marker,))

    with (folder / "data_batch_3").open("wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(DataNotFoundError, match="is not a CIFAR python batch") as err:
        load_cifar10(DataSpec(name="cifar10", data_dir=folder, download=False))
    _one_line(err)
    assert not marker.exists()


# -- requires: [network] ------------------------------------------------------------------------

def test_network_requirement_is_met_by_local_weights_and_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssbench.recipes.requirements as req
    from ssbench.recipes import load_recipe

    monkeypatch.setattr(req, "network_available", lambda *a, **k: False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    monkeypatch.setenv("SSBENCH_DATA", str(tmp_path / "data"))
    text = (Path(__file__).parents[1] / "recipes" / "signsym-cifar10.yaml").read_text()
    shipped = tmp_path / "shipped.yaml"
    shipped.write_text(text)
    (missing,) = req.missing_requirements(load_recipe(shipped).replace(requires=("network",)))
    assert missing.startswith("a network for resnet18's pretrained weights, vgg16's pretrained weights, "
                              "alexnet's pretrained weights, cifar10")
    # the header's first way: torchvision's files in the hub cache, CIFAR-10 under $SSBENCH_DATA
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    for f in ("resnet18-f37072fd.pth", "vgg16-397923af.pth", "alexnet-owt-7be5be79.pth"):
        (hub / f).write_bytes(b"")
    _cifar10(tmp_path / "data" / "cifar10" / "cifar-10-batches-py")
    assert req.missing_requirements(load_recipe(shipped).replace(requires=("network",))) == []
    # the second way: weights and data_dir in a copy of the recipe
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "elsewhere"))
    copy = tmp_path / "copy.yaml"
    copy.write_text(text.replace("pretrained: true}", "pretrained: true, weights: /w/x.pth}")
                    .replace("name: cifar10\n", f"name: cifar10\n  data_dir: {tmp_path / 'data' / 'cifar10'}\n"))
    recipe = load_recipe(copy)
    assert all(m.weights == Path("/w/x.pth") for m in recipe.models)
    assert req.missing_requirements(recipe.replace(requires=("network",))) == []
