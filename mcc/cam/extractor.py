"""Multi-scale + flip CAMs of any classifier: an MCCNet, a timm ViT, or a backbone + linear head.

The class activation map of a classifier that pools a feature map ``F`` (D, h, w) globally and applies
a linear layer ``W`` (C, D) is ``CAM_c = sum_d W[c, d] F[d]`` (Zhou et al., 2016): the classifier's
weights applied at every position instead of to the pooled vector. :class:`CAMExtractor` finds ``F``
and ``W`` for three kinds of model and hands the raw maps to :func:`~mcc.multi_scale_cam`, so the
result is normalised exactly as the MCC/ToCo/AFA code does (docs/method.md section 4) and feeds
:func:`~mcc.cam_to_label`, :class:`~mcc.PAR`, :func:`~mcc.refine_cams_with_background` and
:class:`~mcc.DenseCRF` unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from mcc.cam.multi_scale import multi_scale_cam, resize_to_patch_multiple

__all__ = ["CAMExtractor", "extract_cams"]

DEFAULT_SCALES = (1.0, 0.5, 1.5)
_RESNET_NAMES = ("layer4", "fc")  # torchvision and timm ResNet/ResNeXt/Wide ResNet


class _FeatureCaptured(Exception):
    """Raised by the feature hook to skip the rest of the forward pass (its output is not needed)."""


def _is_timm_vit(model: nn.Module) -> bool:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(model, VisionTransformer)


def _linear_weight(classifier: nn.Module, name: str) -> torch.Tensor:
    if isinstance(classifier, nn.Linear):
        return classifier.weight
    if (
        isinstance(classifier, nn.Conv2d)
        and tuple(classifier.kernel_size) == (1, 1)
        and classifier.groups == 1
    ):
        return classifier.weight.flatten(1)
    raise ValueError(
        f"{name} must be an nn.Linear or a 1x1 nn.Conv2d (the layer applied after global pooling), "
        f"got {type(classifier).__name__}"
    )


def _submodule(model: nn.Module, value: str | nn.Module, name: str) -> nn.Module:
    if isinstance(value, nn.Module):
        if not any(module is value for module in model.modules()):
            raise ValueError(f"{name}: the given module is not part of the model")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a module of the model or its name, got {type(value).__name__}")
    try:
        return model.get_submodule(value)
    except AttributeError:
        children = ", ".join(n for n, _ in model.named_children()) or "none"
        raise ValueError(
            f"{name}: the model ({type(model).__name__}) has no sub-module {value!r} "
            f"(its children: {children})"
        ) from None


class CamFunction(NamedTuple):
    """What a network offers :class:`CAMExtractor` through its ``cam_function(aux=False)`` method.

    Attributes:
        fn: ``fn(images) -> cams``: raw class maps (N, C, h, w) of images (N, 3, H, W) of any size.
        num_outputs: C, the number of maps.
        scales: the network's default multi-scale factors.
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    num_outputs: int
    scales: tuple[float, ...]


class CAMExtractor:
    """Multi-scale + flip class activation maps (B, C, H, W) of a classifier, batched, without gradient.

    Three kinds of model (``kind``), found automatically:

    * ``"mcc"``: an :class:`~mcc.MCCNet`: its final classifier's CAMs (``aux=True``: the auxiliary
      classifier's), the same as :meth:`~mcc.MCCNet.multi_scale_cams`.
    * ``"vit"``: a timm ``VisionTransformer`` classification model (``timm.create_model(name,
      num_classes=K)``): its final patch tokens (after ``norm`` and, for average-pooling models,
      ``fc_norm`` per token) times its ``head`` weights. Models with ``dynamic_img_size=True`` run through
      timm's own ``forward_features``; others through :class:`~mcc.attention.KeyMaskedViT` with timm's
      position-embedding resampling (bicubic, antialiased), so every scale works.
    * ``"hook"``: any backbone + linear head: a forward hook on ``feature_layer`` (a module whose output
      is the (B, D, h, w) map that is pooled) and the weights of ``classifier`` (an ``nn.Linear`` or 1x1
      ``nn.Conv2d`` with D inputs). Found by name for ResNets (``layer4`` + ``fc``: torchvision and timm
      ResNet, ResNeXt, Wide ResNet); pass both names (or modules) for anything else. The forward pass
      stops once the feature map is captured.

    The classifier bias is not used (it is constant over the image). Every scale's input runs once with
    its horizontal flip in one batch of 2B images; the raw maps are merged and normalised by
    :func:`~mcc.multi_scale_cam`: ``sum over scales of ReLU(max(map, flipped map))``, then per image and
    class ``(cam - min) / (max + 1e-5)``. ViT inputs whose sides are not multiples of the patch size are
    resized to the nearest multiple (the maps are resized back to the input size).

    The model runs in eval mode (its mode is restored after each call) on the device of its parameters;
    the images are moved there and the CAMs are returned there.

    Args:
        model: an :class:`~mcc.MCCNet`, a timm ``VisionTransformer`` with a head, or a backbone with a
            linear head.
        feature_layer: name (``"layer4"``, dotted paths allowed) or module of the feature map; with
            ``classifier`` it selects the ``"hook"`` kind for any model.
        classifier: name (``"fc"``) or module of the linear head applied after global pooling.
        scales: resize factors of :func:`~mcc.multi_scale_cam` (default: an MCCNet's config
            ``cam_scales``, else the published 1.0, 0.5, 1.5).
        flip: also use the horizontally flipped images.
        aux: with an MCCNet, the auxiliary classifier's CAMs instead of the final one's.
        classes: keep only these classifier outputs, in this order (e.g. the ImageNet classes a user
            maps to their own label set); default all.

    Raises:
        ValueError: the model's feature map or classifier cannot be found (the message says which names to
            pass), ``feature_layer`` does not output a (B, D, h, w) map, the classifier is not linear or
            does not match D, or ``classes`` indexes outside the classifier's outputs.

    Example:
        >>> import torchvision
        >>> resnet = torchvision.models.resnet18(weights=None, num_classes=20)
        >>> extractor = CAMExtractor(resnet, scales=(1.0, 0.5))   # layer4 + fc, found by name
        >>> extractor(torch.rand(2, 3, 64, 48)).shape
        torch.Size([2, 20, 64, 48])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        feature_layer: str | nn.Module | None = None,
        classifier: str | nn.Module | None = None,
        scales: Sequence[float] | None = None,
        flip: bool = True,
        aux: bool = False,
        classes: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        # A network that offers its CAM function (MCCNet.cam_function) is used through it, so this module
        # needs nothing from the packages above it.
        offers_cams = callable(getattr(model, "cam_function", None))
        self.model = model
        self.flip = bool(flip)
        self.aux = bool(aux)
        self._feature_layer: nn.Module | None = None
        self._weight_source: nn.Module | None = None
        self._vit_wrapper: nn.Module | None = None
        if (feature_layer is None) != (classifier is None):
            raise ValueError("feature_layer and classifier must be given together (or neither)")
        if aux and not offers_cams:
            raise ValueError(
                f"aux=True needs an MCCNet (its auxiliary classifier), got {type(model).__name__}"
            )
        self._cam_function: CamFunction | None = None

        if feature_layer is not None:
            self.kind = "hook"
            self._feature_layer = _submodule(model, feature_layer, "feature_layer")
            self._weight_source = _submodule(model, classifier, "classifier")
        elif offers_cams:
            self.kind = "mcc"
            self._cam_function = model.cam_function(aux=aux)
        elif _is_timm_vit(model):
            self.kind = "vit"
            if getattr(model, "global_pool", "token") == "map":
                raise ValueError(
                    "model: a timm ViT with attention pooling (global_pool='map') has no linear map from "
                    "patch tokens to classes; CAMs need token, avg or max pooling"
                )
            if not isinstance(model.head, nn.Linear):
                raise ValueError(
                    f"model: this timm ViT has no linear classification head (head is "
                    f"{type(model.head).__name__}; create it with num_classes > 0)"
                )
            self._weight_source = model.head
        elif all(isinstance(getattr(model, n, None), nn.Module) for n in _RESNET_NAMES):
            self.kind = "hook"
            self._feature_layer = model.get_submodule(_RESNET_NAMES[0])
            self._weight_source = model.get_submodule(_RESNET_NAMES[1])
        else:
            raise ValueError(
                f"model: cannot find the feature map of a {type(model).__name__} (known: MCCNet, timm "
                "VisionTransformer, ResNets with layer4 + fc); pass feature_layer= (the module whose output "
                "is the (B, D, h, w) map that is globally pooled) and classifier= (the nn.Linear or 1x1 "
                "nn.Conv2d after the pooling)"
            )
        if self._cam_function is not None:
            self.num_outputs = int(self._cam_function.num_outputs)
        else:
            self.num_outputs = _linear_weight(self._weight_source, "classifier").shape[0]

        if scales is None:
            scales = self._cam_function.scales if self._cam_function is not None else DEFAULT_SCALES
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be a non-empty list of factors > 0, got {scales}")
        if classes is not None:
            classes = [int(c) for c in classes]
            bad = [c for c in classes if not 0 <= c < self.num_outputs]
            if not classes or bad:
                raise ValueError(
                    f"classes must be a non-empty list of indices in [0, {self.num_outputs}) "
                    f"(the classifier's outputs), got {bad or classes}"
                )
        self.classes = classes

    @property
    def num_classes(self) -> int:
        """C: the number of maps returned (``len(classes)`` or the classifier's outputs)."""
        return len(self.classes) if self.classes is not None else self.num_outputs

    def _device(self) -> torch.device | None:
        for tensor in self.model.parameters():
            return tensor.device
        return None

    def _weight(self) -> torch.Tensor:
        weight = _linear_weight(self._weight_source, "classifier")
        return weight if self.classes is None else weight[self.classes]

    def _vit_patches(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.model
        if getattr(vit, "dynamic_img_size", False):
            tokens = vit.forward_features(images)  # (N, prefix + h*w, D), after the final norm
            grid = tuple(int(g) for g in vit.patch_embed.dynamic_feat_size(images.shape[-2:]))
            patches = tokens[:, vit.num_prefix_tokens :]
        else:
            if self._vit_wrapper is None:
                from mcc.attention import patch_vit

                # timm's own dynamic-size models resample with antialias=True: the same maps as they give.
                self._vit_wrapper = patch_vit(vit, aux_layer=-1, antialias_pos_embed=True)
            maps = self._vit_wrapper(images).patches  # (N, D, h, w)
            grid = tuple(maps.shape[-2:])
            patches = maps.flatten(2).transpose(1, 2)
        patches = vit.fc_norm(patches)  # the per-token form of the head's norm (Identity for token pooling)
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)

    def _hook_features(self, images: torch.Tensor) -> torch.Tensor:
        captured: list = []

        def hook(module, inputs, output):
            captured.append(output)
            raise _FeatureCaptured

        handle = self._feature_layer.register_forward_hook(hook)
        try:
            self.model(images)
        except _FeatureCaptured:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ValueError(
                f"feature_layer ({type(self._feature_layer).__name__}) did not run in the model's "
                "forward pass"
            )
        features = captured[0]
        if not isinstance(features, torch.Tensor) or features.dim() != 4:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(
                f"feature_layer must output a (B, D, h, w) feature map, got {shape} (for a transformer "
                "with (B, N, D) tokens, use a timm VisionTransformer or reshape the tokens in a module)"
            )
        return features

    def raw_cams(self, images: torch.Tensor) -> torch.Tensor:
        """Raw class maps at feature resolution, (N, C, h, w), for one batch: the ``cam_fn`` of
        :func:`~mcc.multi_scale_cam` (call it under ``torch.no_grad()`` and with the model in eval mode
        to get what :meth:`__call__` uses).

        Args:
            images: (N, 3, H, W), normalised as the model expects, on the model's device.
        """
        if self.kind == "mcc":
            cams = self._cam_function.fn(images)
            return cams if self.classes is None else cams[:, self.classes]
        if self.kind == "vit":
            features = self._vit_patches(
                resize_to_patch_multiple(images, tuple(self.model.patch_embed.patch_size))
            )
        else:
            features = self._hook_features(images)
        weight = self._weight()
        if features.shape[1] != weight.shape[1]:
            raise ValueError(
                f"classifier takes {weight.shape[1]} features but feature_layer outputs {features.shape[1]} "
                "channels: pass the layer whose output is pooled into the classifier"
            )
        return torch.einsum("cd,ndhw->nchw", weight.to(features.dtype), features)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Multi-scale + flip CAMs of a batch.

        Args:
            images: (B, 3, H, W) float, normalised as the model expects (any device: moved to the model's).

        Returns:
            (B, C, H, W) float32 CAMs in [0, 1), on the model's device, without gradient.
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor of shape (B, 3, H, W), got {shape}")
        device = self._device()
        if device is not None:
            images = images.to(device)
        was_training = self.model.training
        self.model.eval()
        try:
            cams, _ = multi_scale_cam(lambda x: (self.raw_cams(x), None), images, self.scales, self.flip)
        finally:
            self.model.train(was_training)
        return cams


def extract_cams(
    model: nn.Module,
    images: torch.Tensor,
    *,
    feature_layer: str | nn.Module | None = None,
    classifier: str | nn.Module | None = None,
    scales: Sequence[float] | None = None,
    flip: bool = True,
    aux: bool = False,
    classes: Sequence[int] | None = None,
) -> torch.Tensor:
    """Function form of :class:`CAMExtractor`: ``CAMExtractor(model, ...)(images)``.

    Args:
        model: an :class:`~mcc.MCCNet`, a timm ``VisionTransformer`` with a head, or a backbone with a
            linear head (see :class:`CAMExtractor`).
        images: (B, 3, H, W) float, normalised as the model expects.
        feature_layer, classifier, scales, flip, aux, classes: see :class:`CAMExtractor`.

    Returns:
        (B, C, H, W) float32 CAMs in [0, 1), on the model's device, without gradient.
    """
    extractor = CAMExtractor(
        model,
        feature_layer=feature_layer,
        classifier=classifier,
        scales=scales,
        flip=flip,
        aux=aux,
        classes=classes,
    )
    return extractor(images)
