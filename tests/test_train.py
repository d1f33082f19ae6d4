"""End-to-end pre-training through the CLI on real CIFAR-10 images: outputs, resume,
Ctrl-C, export and the errors a user sees."""

import json
from pathlib import Path

import pytest
import torch
import torchvision

from selfsup.cli import build_parser, main
from selfsup.train import trainer as trainer_mod

ROOT = Path(__file__).resolve().parents[1]
FAST = ["backbone.cifar_stem=false", "train.knn_every=1", "train.progress=false",
        "train.log_every=1", "optim.warmup_epochs=1"]


def _pretrain(method, data, out, *extra, epochs=2, batch=32):
    return main(["pretrain", "--method", method, "--data", str(data),
                 "--config", f"cifar10/{method}",
                 "--epochs", str(epochs), "--batch-size", str(batch), "--out", str(out),
                 "--set", *FAST, *extra])


@pytest.fixture(scope="module")
def small_cifar(cifar_subset):
    return cifar_subset(10, 5)  # 100 train, 50 test images, real CIFAR-10


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_pretrain_writes_checkpoint_metrics_knn_and_backbone(method, small_cifar, tmp_path, capsys):
    assert _pretrain(method, small_cifar, tmp_path) == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "summary" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    steps = [r for r in records if "summary" not in r]
    assert len(steps) == 2 * 3  # 100 images // 32 = 3 steps per epoch
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    # collapse monitor on every logged step: std of normalised embeddings, effective rank
    assert all(0 < r["z_std"] <= 1 and 1 <= r["z_eff_rank"] <= 32 for r in steps)
    knn = json.loads((tmp_path / "knn.json").read_text())
    assert knn["train_images"] == 100 and knn["test_images"] == 50
    # the reported kNN equals one computed here from the exported weights, the image files and
    # their folder names alone (so a wrong split, label order or stale weight would show), and the
    # last epoch's online kNN (all 100 images are below the cap) is the same measurement
    independent = _independent_knn(tmp_path / "backbone.pth", small_cifar)
    assert abs(knn["knn_top1"] - independent) <= 1 / 50 + 1e-9  # at most one near-tie of 50 test images
    assert epochs[-1]["online_knn"] == knn["knn_top1"]
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 6
    assert (tmp_path / "config.yaml").is_file()
    weights = torch.load(tmp_path / "backbone.pth", weights_only=True)
    net = torchvision.models.resnet18()
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected


def _independent_knn(weights: Path, folder: Path, k: int = 200, temperature: float = 0.1) -> float:
    """Weighted kNN top-1 (InstDisc) with torchvision's ResNet-18, PIL and the class folders."""
    import numpy as np
    from PIL import Image

    from selfsup.views.config import CIFAR10_MEAN, CIFAR10_STD

    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    net.load_state_dict(torch.load(weights, weights_only=True), strict=False)
    net.eval()
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)

    def features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        classes = sorted(p.name for p in (folder / split).iterdir())
        files = [(f, c) for c, name in enumerate(classes) for f in sorted((folder / split / name).glob("*.jpg"))]
        x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))) for f, _ in files])
        x = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
        with torch.no_grad():
            return torch.nn.functional.normalize(net(x), dim=1), torch.tensor([c for _, c in files])

    (ftr, ytr), (fte, yte) = features("train"), features("test")
    sims, idx = (fte @ ftr.T).topk(min(k, len(ytr)), dim=1)
    votes = torch.zeros(len(yte), 10).scatter_add_(1, ytr[idx], (sims / temperature).exp())
    return (votes.argmax(1) == yte).float().mean().item()


def _interrupt_at(monkeypatch, call: int) -> None:
    """Make the trainer's ``call``-th optimiser step raise KeyboardInterrupt (Ctrl-C)."""
    real_step = trainer_mod.Trainer.train_step
    calls = {"n": 0}

    def interrupted(self, batches, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real_step(self, batches, **kwargs)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", interrupted)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_ctrl_c_then_resume_continues_the_same_run(method, small_cifar, tmp_path, monkeypatch, capsys):
    extra = ["train.knn_every=0"]
    assert _pretrain(method, small_cifar, tmp_path / "straight", *extra) == 0
    with monkeypatch.context() as m:
        _interrupt_at(m, 5)  # during epoch 2 (3 steps per epoch)
        assert _pretrain(method, small_cifar, tmp_path / "split", *extra) == 130
    assert "saved at step 3 (epoch 1 completed)" in capsys.readouterr().err
    assert torch.load(tmp_path / "split/last.pt", weights_only=True)["epoch"] == 1
    assert _pretrain(method, small_cifar, tmp_path / "split", *extra, "--resume") == 0
    a = torch.load(tmp_path / "straight/last.pt", weights_only=True)
    b = torch.load(tmp_path / "split/last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6 and b["epoch"] == 2
    for k, v in a["method"].items():
        assert torch.allclose(v.float(), b["method"][k].float(), atol=1e-6), k
    for k, v in a["optimizer"]["state"].items():
        assert torch.allclose(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"], atol=1e-6)


def test_eval_and_export_commands(small_cifar, tmp_path, capsys):
    run = tmp_path / "run"
    assert _pretrain("simclr", small_cifar, run, "backbone.cifar_stem=true", "train.knn_every=0",
                     epochs=1) == 0
    assert main(["eval", "knn", "--checkpoint", str(run), "--data", str(small_cifar)]) == 0
    knn = json.loads((run / "knn.json").read_text())
    assert knn["train_images"] == 100 and knn["k"] == 200
    assert main(["eval", "linear", "--checkpoint", str(run), "--data", str(small_cifar),
                 "--epochs", "5"]) == 0
    lin = json.loads((run / "linear.json").read_text())
    assert lin["epochs"] == 5 and 0 <= lin["last_epoch_top1"] <= lin["best_epoch_top1"] <= 1
    assert lin["weight_decay"] == 0.0
    assert main(["eval", "linear", "--checkpoint", str(run), "--data", str(small_cifar),
                 "--epochs", "5", "--weight-decay", "auto", "--out", str(tmp_path / "auto.json")]) == 0
    auto = json.loads((tmp_path / "auto.json").read_text())
    assert set(auto["validation_top1"]) == {"0.0", "0.001", "0.01", "0.03", "0.1", "0.3"}
    assert auto["weight_decay"] in (0.0, 0.001, 0.01, 0.03, 0.1, 0.3)
    assert auto["validation_top1"][str(auto["weight_decay"])] == max(auto["validation_top1"].values())
    assert main(["eval", "knn", "--checkpoint", str(run), "--data", str(small_cifar),
                 "--random-init"]) == 0
    assert json.loads((run / "knn_random_init.json").read_text())["random_init"] is True
    # export: CIFAR-stem weights load into torchvision's resnet18 with the same stem change
    assert main(["export", "--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "r18.pth")]) == 0
    weights = torch.load(tmp_path / "r18.pth", weights_only=True)
    net = torchvision.models.resnet18()
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = torch.nn.Identity()
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    trained = torch.load(run / "last.pt", weights_only=True)["method"]
    assert torch.equal(net.layer1[0].conv1.weight, trained["backbone.net.layer1.0.conv1.weight"])
    # backbone.init: a new run starts from the exported weights (its momentum copy too), a
    # checkpoint rebuilds without the file, a wrong file is one line naming it
    from selfsup.config import build_config
    from selfsup.methods import METHODS, build_method
    from selfsup.train.runs import load_run

    (tmp_path / "r18_copy.pth").write_bytes((tmp_path / "r18.pth").read_bytes())
    raw = {"method": "byol", "backbone": {"cifar_stem": True, "init": str(tmp_path / "r18_copy.pth")}}
    byol = build_method(build_config(raw, METHODS))
    assert torch.equal(byol.backbone.net.layer1[0].conv1.weight, net.layer1[0].conv1.weight)
    assert torch.equal(byol.target.backbone.net.layer4[1].conv2.weight, net.layer4[1].conv2.weight)
    second = tmp_path / "second"
    assert _pretrain("byol", small_cifar, second, "backbone.cifar_stem=true", "train.knn_every=0",
                     f"backbone.init={tmp_path / 'r18_copy.pth'}", epochs=1) == 0
    (tmp_path / "r18_copy.pth").unlink()
    cfg, rebuilt = load_run(second)
    assert cfg.backbone.init == str(tmp_path / "r18_copy.pth")  # recorded, not needed to rebuild
    trained = torch.load(second / "last.pt", weights_only=True)["method"]
    assert torch.equal(rebuilt.backbone.net.conv1.weight, trained["backbone.net.conv1.weight"])
    assert main(["pretrain", "--method", "simclr", "--data", str(small_cifar), "--out", str(tmp_path / "bad"),
                 "--batch-size", "8", "--set", f"backbone.init={run / 'config.yaml'}"]) == 2
    assert f"backbone.init {run / 'config.yaml'}: cannot read weights" in capsys.readouterr().err
    assert main(["pretrain", "--method", "simclr", "--data", str(small_cifar), "--out", str(tmp_path / "bad"),
                 "--batch-size", "8", "--set", "backbone.name=resnet34", f"backbone.init={tmp_path / 'r18.pth'}"]) == 2
    assert "missing key(s) layer1.2." in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "simclrr"], "error: unknown method 'simclrr' (did you mean 'simclr'?)"),
        (["--method", "simclr", "--set", "optim.lrr=1"], "unknown config key 'optim.lrr' (did you mean 'lr'?)"),
        (["--method", "simclr", "--batch-size", "4096"], "larger than the dataset (100 images)"),
        (["--method", "simclr", "--config", "missing.yaml"], "missing.yaml is neither a file nor a preset"),
        (["--method", "simclr", "--set", "train.epochs=two"], "train.epochs: expected an integer"),
    ],
)
def test_cli_errors_are_one_line(args, message, small_cifar, tmp_path, capsys):
    argv = ["pretrain", "--data", str(small_cifar), "--out", str(tmp_path), *args]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("selfsup: ")]
    assert len(lines) == 1 and message in lines[0]  # one error line (besides the notice of the recipe used)


def test_cli_missing_data_is_one_line_error(tmp_path, capsys):
    assert main(["pretrain", "--method", "simclr", "--data", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "o")]) == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("selfsup: ")]
    assert len(lines) == 1 and lines[0].startswith("error:") and "nowhere" in lines[0]


def test_methods_lists_simclr_and_byol(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "simclr" in out and "byol" in out


def test_repeated_set_flags_accumulate():
    """`--set a=1 --set b=2` keeps both overrides (a plain store would silently drop the first)."""
    args = build_parser().parse_args(["pretrain", "--set", "optim.lr=0.5", "train.epochs=3",
                                      "--set", "dino.out_dim=512"])
    assert args.set == ["optim.lr=0.5", "train.epochs=3", "dino.out_dim=512"]
    assert build_parser().parse_args(["pretrain"]).set == []


def test_gradient_accumulation_steps_once_per_global_batch(small_cifar, tmp_path):
    assert _pretrain("simclr", small_cifar, tmp_path, "train.accum_steps=2", "train.knn_every=0",
                     epochs=1) == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 3  # 100 images // 32 per optimiser step, each from 2 micro-batches of 16


def test_schedules_layer_decay_and_the_method_hooks_reach_the_trainer(small_cifar, tmp_path, monkeypatch):
    """poly lr, a cosine weight decay and layer-wise lr decay, as the optimiser saw them; the
    per-epoch method hook, called after each epoch before its checkpoint; the crop-sampler hook."""
    from selfsup.methods.base import Method
    from selfsup.train.schedule import cosine_value, learning_rate

    calls, crops = [], []
    monkeypatch.setattr(Method, "on_epoch_end",
                        lambda self, epoch: calls.append((epoch, (tmp_path / "last.pt").is_file())))
    monkeypatch.setattr(Method, "crop_sampler", lambda self, base: crops.append(base))  # random crops: None
    assert _pretrain("simclr", small_cifar, tmp_path, "train.knn_every=0", "optim.schedule=poly",
                     "optim.weight_decay=1e-4", "optim.weight_decay_end=0.01", "optim.layer_decay=0.5") == 0
    assert calls == [(1, False), (2, True)]  # epoch 1's hook ran before the first checkpoint existed
    assert crops == [None] * 6  # the method is asked for its crop sampler at every step
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "summary" not in r]
    total, warmup = 6, 3  # 2 epochs of 3 steps, 1 warm-up epoch; the preset's lr 0.5 and min_lr 0
    assert [r["lr"] for r in steps] == pytest.approx([learning_rate(k, total, warmup, 0.5, schedule="poly")
                                                      for k in range(total)])
    assert [r["weight_decay"] for r in steps] == pytest.approx([cosine_value(k, total, 1e-4, 0.01)
                                                                for k in range(total)])
    groups = torch.load(tmp_path / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    last_lr = learning_rate(total - 1, total, warmup, 0.5, schedule="poly")
    assert {g["lr_scale"] for g in groups} == {0.5**k for k in range(6)}  # stem 0.5^5 ... heads 1
    assert all(g["lr"] == pytest.approx(last_lr * g["lr_scale"]) for g in groups)
    assert all(g["weight_decay"] == pytest.approx(cosine_value(total - 1, total, 1e-4, 0.01) if g["decay"] else 0)
               for g in groups)
