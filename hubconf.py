"""torch.hub entry points: DINO backbones from `.safetensors` files written by `dino-mlops export --format safetensors`.

    model = torch.hub.load("path/to/dino-mlops", "dino_vit", source="local", weights="model.safetensors")

Each file records its timm model name and `timm.create_model` arguments; the entry point builds that
plain timm model, loads the weights strictly and returns it in eval mode. Only torch, timm and
safetensors are needed: the loader is imported when an entry point is called, not with this module.
"""

dependencies = ["torch", "timm", "safetensors"]


def dino_vit(weights: str, **kwargs):
    """A DINO ViT backbone from a local `.safetensors` file: images (B, 3, S, S) -> features (B, D).

    Args:
        weights: path of the file written by `dino-mlops export --format safetensors`.
        **kwargs: replace recorded `timm.create_model` arguments (e.g. `dynamic_img_size=False`).
    """
    from dino_model.export.safetensors import load_timm_backbone

    return load_timm_backbone(weights, family="vit", **kwargs)


def dino_resnet(weights: str, **kwargs):
    """A DINO ResNet backbone from a local `.safetensors` file: images (B, 3, S, S) -> features (B, D).

    Args:
        weights: path of the file written by `dino-mlops export --format safetensors`.
        **kwargs: replace recorded `timm.create_model` arguments.
    """
    from dino_model.export.safetensors import load_timm_backbone

    return load_timm_backbone(weights, family="resnet", **kwargs)
