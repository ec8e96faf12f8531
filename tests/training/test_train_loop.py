"""The training loop: exact resume, files it writes, gradient accumulation, build_vit."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from training_helpers import SIZE, datasets, parameters, settings, tiny_net, write_root

from mcc.training import build_vit, load_checkpoint, resolve_resume, train


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_root(tmp_path_factory.mktemp("synthetic"), num_train=6)


def run(root, work_dir, net=None, **overrides):
    net = net or tiny_net()
    train_set, val_set = datasets(root)
    result = train(
        net, train_set, settings(work_dir, **overrides), val_set=val_set, device="cpu", log=lambda m: None
    )
    return net, result


def test_resume_continues_exactly(root, tmp_path):
    # 6 images, batch 2: 3 steps per epoch; the second half starts mid-epoch and crosses into epoch 1
    straight, straight_result = run(root, tmp_path / "straight", max_iters=6)
    _, first_half = run(root, tmp_path / "resumed", max_iters=6, stop_after=2)
    assert first_half.step == 2 and (tmp_path / "resumed" / "last.pt").is_file()
    torch.manual_seed(123)  # the global RNG state comes from the checkpoint, not from here
    resumed, second_half = run(root, tmp_path / "resumed", net=tiny_net(seed=7), max_iters=6, resume="auto")
    assert second_half.step == 6
    assert first_half.history + second_half.history == straight_result.history
    expected = parameters(straight)
    for name, value in parameters(resumed).items():
        assert torch.equal(value, expected[name]), name


def test_files_evaluation_and_best(root, tmp_path):
    _, result = run(root, tmp_path, max_iters=2, eval_every=1, save_every=1, best_metric="cam")
    assert [step for step, _ in result.evaluations] == [1, 2]
    assert set(result.evaluations[0][1]) == {"cam", "seg"}
    best_value, best_step = result.best
    assert best_value == max(scores["cam"] for _, scores in result.evaluations)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["max_iters"] == 2 and config["mcc"]["decoder_dim"] == 32
    assert config["num_classes"] == 5
    last, best = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(tmp_path / "best.pt")
    assert last["step"] == 2 and best["step"] == best_step
    assert json.loads(json.dumps(last["config"]["mcc"])) == config["mcc"]


def test_accumulation_moves_the_teacher_once_per_step(root, tmp_path):
    net = tiny_net()
    with torch.no_grad():
        for teacher in net.projector.teacher.parameters():
            teacher.add_(0.05)  # a teacher away from the student, so that a second EMA step would show
    expected = copy.deepcopy(net.projector)
    expected.update_teacher()
    run(root, tmp_path, net=net, max_iters=1, warmup_iters=1, batch_size=2, accumulation_steps=2)
    for name, value in expected.teacher.state_dict().items():
        assert torch.equal(net.projector.teacher.state_dict()[name], value), name


def test_resume_errors(root, tmp_path):
    assert resolve_resume("auto", tmp_path) is None
    assert resolve_resume(None, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        resolve_resume(str(tmp_path / "missing.pt"), tmp_path)
    with pytest.raises(ValueError, match="divisible"):
        run(root, tmp_path, batch_size=3, accumulation_steps=2)


def test_build_vit_from_a_local_file(tmp_path):
    source = build_vit("test_vit", pretrained=False, img_size=SIZE)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    loaded = build_vit("test_vit", pretrained_file=path, img_size=SIZE)
    for name, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert loaded.num_classes == 0
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        build_vit("test_vit", pretrained_file=tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="not a timm model"):
        build_vit("no_such_vit")


def test_a_crop_that_cannot_make_cams_is_refused_before_any_work(root, tmp_path):
    from mcc.data import VOCTrainViews

    train_set = VOCTrainViews(root, "train", crop_size=48, seed=0)  # 0.5 x 48 = 24: not whole patches of 16
    with pytest.raises(ValueError, match="crop size"):
        train(tiny_net(), train_set, settings(tmp_path), device="cpu", log=lambda m: None)
    assert not (tmp_path / "config.json").exists()
