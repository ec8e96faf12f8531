import pytest
import torch
from par_reference import reference_refine

from mcc.refine import PAR, refine_cams_with_background

cuda = pytest.mark.cuda


def random_case(batch=3, classes=5, size=(20, 26), cam_size=(5, 7)):
    images = torch.rand(batch, 3, *size)
    cams = torch.rand(batch, classes, *cam_size)
    cls_label = torch.zeros(batch, classes)
    cls_label[0, [1, 3]] = 1
    if batch > 1:
        cls_label[1, 4] = 1
    # Image 2 (if any) has no foreground class at all.
    return images, cams, cls_label


@pytest.mark.parametrize(
    "size, cam_size, down_scale", [((20, 26), (5, 7), 2), ((17, 23), (17, 23), 2), ((12, 10), (3, 3), 1)]
)
def test_matches_per_image_selection(size, cam_size, down_scale):
    images, cams, cls_label = random_case(size=size, cam_size=cam_size)
    par = PAR(num_iter=3)
    label = refine_cams_with_background(par, images, cams, cls_label, down_scale=down_scale)
    expected = reference_refine(par, images, cams, cls_label, down_scale=down_scale)
    assert label.dtype == torch.long and label.shape == (3, *size)
    assert torch.equal(label, expected)


def test_matches_per_image_selection_with_boxes_and_thresholds():
    images, cams, cls_label = random_case()
    img_box = torch.tensor([[0, 20, 0, 26], [2, 15, 3, 20], [5, 6, 0, 1]])
    par = PAR(num_iter=2)
    kwargs = {"high_thre": 0.6, "low_thre": 0.4}
    label = refine_cams_with_background(par, images, cams, cls_label, img_box=img_box, **kwargs)
    expected = reference_refine(par, images, cams, cls_label, img_box=img_box, **kwargs)
    assert torch.equal(label, expected)
    assert (label[1, :2] == 255).all() and (label[1, :, 20:] == 255).all()


def test_absent_classes_get_exactly_zero_probability():
    seen = {}

    def spy(images, masks):
        seen["masks"] = masks
        return masks

    images, cams, cls_label = random_case()
    refine_cams_with_background(spy, images, cams, cls_label)
    # Kept channels: background + class ids 2, 4, 5 (present somewhere), for both levels.
    masks = seen["masks"]
    assert masks.shape == (3, 8, 10, 13)
    high = masks[:, :4]
    assert (high[0, 3] == 0).all() and (high[0, :3] > 0).all()  # id 5 absent from image 0
    assert (high[1, 1:3] == 0).all() and (high[1, 3] > 0).all()  # image 1 has id 5 only
    assert (high[2, 1:] == 0).all() and (high[2, 0] == 1).all()  # image 2: background only
    torch.testing.assert_close(high.sum(1), torch.ones(3, 10, 13))


def test_three_way_logic_by_hand():
    # Without refinement steps the labels follow the softmax of (level, cam) directly.
    images = torch.rand(1, 3, 8, 12)
    cams = torch.zeros(1, 3, 8, 12)
    cams[0, 2, :, :4] = 0.9  # above both levels -> class 3
    cams[0, 2, :, 4:8] = 0.5  # between the levels -> ignore
    cams[0, 2, :, 8:] = 0.1  # below both levels -> background
    cams[0, 0] = 5.0  # absent class, however strong, never appears
    cls_label = torch.tensor([[0.0, 0.0, 1.0]])
    label = refine_cams_with_background(PAR(num_iter=0), images, cams, cls_label, down_scale=1)
    expected = torch.tensor([3] * 4 + [255] * 4 + [0] * 4).expand(1, 8, 12)
    assert torch.equal(label, expected)


def test_two_flat_regions():
    # CAM of class 7 covers the left (red) region and spills over the edge; PAR snaps it back.
    images = torch.empty(1, 3, 32, 48)
    images[..., :24] = torch.tensor([0.8, 0.1, 0.1])[:, None, None]
    images[..., 24:] = torch.tensor([0.2, 0.5, 0.9])[:, None, None]
    cams = torch.zeros(1, 10, 32, 48)
    cams[0, 6, :, :28] = 1.0
    cls_label = torch.zeros(1, 10)
    cls_label[0, 6] = 1
    assert (refine_cams_with_background(PAR(num_iter=0), images, cams, cls_label)[0, :, 24:28] == 7).all()
    label = refine_cams_with_background(PAR(), images, cams, cls_label)
    assert (label[0, :, :23] == 7).all()
    assert (label[0, :, 25:] == 0).all()


def test_ignore_index_and_any_callable_par():
    images, cams, cls_label = random_case(batch=1)
    label = refine_cams_with_background(lambda i, m: m, images, cams, cls_label, ignore_index=-1)
    assert set(label.unique().tolist()) <= {-1, 0, 2, 4}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    images, cams, cls_label = random_case()
    par = PAR(num_iter=2)
    label = refine_cams_with_background(par, images.to(dtype), cams.to(dtype), cls_label.to(dtype))
    expected = reference_refine(par, images.to(dtype).float(), cams.to(dtype).float(), cls_label)
    assert label.dtype == torch.long
    assert (label == expected).float().mean() > 0.99


def test_under_autocast():
    images, cams, cls_label = random_case()
    par = PAR(num_iter=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        label = refine_cams_with_background(par, images, cams, cls_label)
    assert torch.equal(label, reference_refine(par, images, cams, cls_label))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"images": torch.rand(3, 20, 26)}, "images"),
        ({"cams": torch.rand(2, 5, 5, 7)}, "cams"),
        ({"cls_label": torch.zeros(3, 4)}, "cls_label"),
        ({"cls_label": torch.zeros(3, 5, 1)}, "cls_label"),
        ({"down_scale": 0}, "down_scale"),
        ({"down_scale": 1.5}, "down_scale"),
        ({"down_scale": 40}, "down_scale"),
        ({"img_box": torch.tensor([[0, 21, 0, 26]] * 3)}, "img_box"),
        ({"img_box": torch.tensor([[0, 20, 0, 26]] * 2)}, "img_box"),
        ({"img_box": torch.tensor([[5, 4, 0, 26]] * 3)}, "img_box"),
    ],
)
def test_bad_input_raises(change, match):
    images, cams, cls_label = random_case()
    args = {"images": images, "cams": cams, "cls_label": cls_label}
    kwargs = {k: change.pop(k) for k in list(change) if k not in args}
    args.update(change)
    with pytest.raises(ValueError, match=match):
        refine_cams_with_background(PAR(num_iter=1), **args, **kwargs)


@cuda
def test_cuda_matches_cpu():
    images, cams, cls_label = random_case()
    par = PAR(num_iter=2)
    label = refine_cams_with_background(par, images.cuda(), cams.cuda(), cls_label.cuda())
    assert label.device.type == "cuda"
    assert (label.cpu() == refine_cams_with_background(par, images, cams, cls_label)).float().mean() > 0.999


def test_per_image_high_thre_equals_one_call_per_image():
    # DuPL's refine_cams_with_dynamic_thres: image b's high background map is the constant high_thre[b]
    images, cams, cls_label = random_case()
    img_box = torch.tensor([[0, 20, 0, 26], [2, 15, 3, 20], [5, 6, 0, 1]])
    par = PAR(num_iter=3)
    high = torch.tensor([0.55, 0.7, 0.62])
    label = refine_cams_with_background(par, images, cams, cls_label, high_thre=high, img_box=img_box)
    for b in range(3):
        one = refine_cams_with_background(
            par, images[b : b + 1], cams[b : b + 1], cls_label[b : b + 1], high_thre=float(high[b]),
            img_box=img_box[b : b + 1],
        )  # fmt: skip
        assert torch.equal(label[b : b + 1], one), b


@pytest.mark.parametrize(
    ("high_thre", "match"), [(torch.tensor([0.5, 0.2, 0.9]), r"high_thre\[1\]"), (torch.ones(2), "high_thre")]
)
def test_per_image_high_thre_checks(high_thre, match):
    images, cams, cls_label = random_case()
    with pytest.raises(ValueError, match=match):
        refine_cams_with_background(PAR(num_iter=1), images, cams, cls_label, high_thre=high_thre)


def test_ties_go_to_the_first_class_as_argmax():
    # Two present classes with the same CAM tie everywhere: the lower class id wins (argmax's first
    # maximum), at both background levels, on the layout where the step's label is an argmax over classes.
    images, cams, cls_label = random_case(batch=1)
    cams[0, 3] = cams[0, 1]
    par = PAR(num_iter=2)
    label = refine_cams_with_background(par, images, cams, cls_label, high_thre=0.0, low_thre=0.0)
    assert set(label.unique().tolist()) == {2}
    assert torch.equal(label, reference_refine(par, images, cams, cls_label, high_thre=0.0, low_thre=0.0))
