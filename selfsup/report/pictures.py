"""The figures that need the run's networks: t-SNE of held-out features (run and random-init
baseline), kNN retrieval, the recipe's views and the crop sampler's boxes."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from selfsup.config import PretrainConfig
from selfsup.core.device import resolve_device
from selfsup.core.errors import ConfigError
from selfsup.data import DataError, ImageDataset, cap, open_dataset
from selfsup.eval.preview import preview_image
from selfsup.methods import Method
from selfsup.report.plots import embedding_figure, retrieval_figure, save, views_figure
from selfsup.report.run import RunFolder
from selfsup.train.runs import load_run
from selfsup.views.features import extract_features
from selfsup.views.recipes import make_views, view_specs


@dataclass
class PictureOptions:
    """How much of the data the pictures use. ``data``: the images (default: the run's own
    ``data.path``); ``tsne_images``: held-out images embedded; ``database_images``: training
    images searched for neighbours; ``queries`` x ``neighbours``: the retrieval grid;
    ``view_images``: rows of the view pictures."""

    data: str | None = None
    tsne_images: int = 1000
    database_images: int = 5000
    queries: int = 8
    neighbours: int = 8
    view_images: int = 6
    batch_size: int = 256
    device: str = "cpu"
    seed: int = 0


@dataclass
class Picture:
    """A figure written beside the report: its file name there, a title and a caption."""

    file: str
    title: str
    caption: str


def _images(dataset: ImageDataset, indices: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) pixels of ``dataset[indices]`` in that order."""
    part = dataset.subset(indices)
    return next(part.batches(len(part), shuffle=False, drop_last=False)).images


def _embed(features: torch.Tensor, seed: int) -> np.ndarray:
    """t-SNE (scikit-learn; PCA to 50 dimensions first) of L2-normalised features."""
    x = F.normalize(features, dim=1).numpy()
    x = PCA(n_components=min(50, *x.shape), random_state=seed).fit_transform(x)
    perplexity = min(30.0, (len(x) - 1) / 3)
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)


def _umap(features: torch.Tensor, seed: int) -> np.ndarray:
    import umap  # optional: only called when installed

    return umap.UMAP(random_state=seed).fit_transform(F.normalize(features, dim=1).numpy())


class RunPictures:
    """Draws the network figures of one run into ``out`` (file names prefixed ``prefix``)."""

    def __init__(self, run: RunFolder, out: Path, prefix: str, opts: PictureOptions) -> None:
        self.run, self.out, self.prefix, self.opts = run, out, prefix, opts
        self.device = resolve_device(opts.device)
        self.cfg: PretrainConfig
        self.cfg, self.method = load_run(run.path)
        torch.manual_seed(opts.seed)  # the weights of the random-init baseline
        self.baseline: Method = load_run(run.path, random_init=True)[1]
        self.data = opts.data or self.cfg.data.path

    def all(self) -> tuple[list[Picture], list[str]]:
        """Every figure that can be drawn, and a line for each that cannot (and why)."""
        pictures, missing = [], []
        for name, draw in (("views", self.views), ("crops", self.crops), ("held-out features", self.held_out)):
            try:
                pictures += draw()
            except (DataError, ConfigError, OSError) as e:
                missing.append(f"{name}: {e}")
        return pictures, missing

    def _save(self, figure: Figure, name: str) -> str:
        file = f"{self.prefix}{name}.png"
        save(figure, self.out / file)
        return file

    # ---------------------------------------------------------------- views
    def views(self) -> list[Picture]:
        """The recipe's views of a few training images (masks tinted where the run has them)."""
        c = self.cfg
        splits = open_dataset(self.data, load_size=c.data.load_size, masks=c.data.masks or None,
                              skip_missing=c.data.skip_missing)
        train = cap(splits.train, c.data.max_images, c.train.seed)
        gen = torch.Generator().manual_seed(self.opts.seed)
        chosen = torch.randperm(len(train), generator=gen)[: self.opts.view_images].sort().values
        batch = next(train.subset(chosen).batches(len(chosen), shuffle=False, drop_last=False))
        specs = view_specs(c.views, type(self.method).recipe)
        crop = self.method.crop_sampler(None)
        views = make_views(batch.images, batch.sizes, specs, gen, crop, batch.index, batch.maps)
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (c.views.mean, c.views.std))
        shown = [(f"view {i + 1} ({v.images.shape[-1]} px)", (v.images * std + mean).clamp(0, 1), v.maps)
                 for i, v in enumerate(views)]
        recipe = c.views.recipe or type(self.method).recipe
        caption = (f"{len(views)} views per image from the run's recipe '{recipe}' (views.size {c.views.size}, "
                   f"scale {list(c.views.scale)}" + (f", {c.views.local_crops} local crops" if c.views.local_crops
                                                      else "") + ")")
        if batch.maps is not None:
            caption += "; the saliency mask each view carries is tinted red"
        return [Picture(self._save(views_figure(batch.images, shown), "views"), "Views", caption)]

    def crops(self) -> list[Picture]:
        """The run's crop sampler (``views.crop``: ContrastiveCrop's boxes in red) beside random crops."""
        c = self.cfg.views
        image = preview_image(c.crop, self.run.path, self.opts.data, self.opts.view_images, 4, self.opts.seed,
                              str(self.device))
        file = f"{self.prefix}crops.png"
        image.save(self.out / file)
        what = ("ContrastiveCrop object boxes (thick red) and crops sampled around them" if c.crop == "contrastive"
                else f"crops of the run's sampler '{c.crop}'")
        return [Picture(file, "Crop boxes", f"{what}, beside random-resized crops of the same images")]

    # ---------------------------------------------------------------- held-out features
    def held_out(self) -> list[Picture]:
        """t-SNE (and UMAP where installed) of held-out features, run vs random init; kNN retrieval."""
        c, o = self.cfg, self.opts
        splits = open_dataset(self.data, load_size=c.data.load_size)
        if splits.test is None or not (splits.test.has_labels and splits.train.has_labels):
            raise DataError(f"{self.data} has no labelled held-out split (t-SNE and retrieval need class folders "
                            "with a test/ or val/ split)")
        test, train = cap(splits.test, o.tsne_images, o.seed), cap(splits.train, o.database_images, o.seed)
        args = (c.views.size, c.views.mean, c.views.std, o.batch_size, self.device)
        fte, yte = extract_features(self.method.backbone.to(self.device), test, *args)
        ftr, ytr = extract_features(self.method.backbone, train, *args)
        base, _ = extract_features(self.baseline.backbone.to(self.device), test, *args)
        classes = splits.train.classes
        panels = [(f"{self.run.name} ({c.method})", _embed(fte, o.seed)), ("random init", _embed(base, o.seed))]
        title = "t-SNE"
        if importlib.util.find_spec("umap") is not None:
            panels += [(f"UMAP: {self.run.name}", _umap(fte, o.seed)), ("UMAP: random init", _umap(base, o.seed))]
            title = "t-SNE and UMAP"
        tsne = Picture(self._save(embedding_figure(panels, yte.numpy(), classes), "tsne"), title,
                       f"{title} of the backbone features of {len(test)} held-out images, coloured by class: the "
                       "trained run beside the same architecture with random weights")
        # queries: the first held-out image of each class in turn
        order = torch.argsort(yte, stable=True)
        firsts = order[torch.cat([torch.tensor([True]), yte[order][1:] != yte[order][:-1]])]
        queries = firsts[: o.queries]
        sims = F.normalize(fte[queries], dim=1) @ F.normalize(ftr, dim=1).T
        top = sims.topk(min(o.neighbours, len(train)), dim=1).indices
        neighbours = _images(train, top.flatten()).view(*top.shape, *_images(train, top[0, :1]).shape[1:])
        grid = retrieval_figure(_images(test, queries), yte[queries].tolist(), neighbours, ytr[top], classes)
        right = float((ytr[top] == yte[queries, None]).float().mean())
        retrieval = Picture(self._save(grid, "retrieval"), "kNN retrieval",
                            f"held-out queries (left) and their {top.shape[1]} nearest of {len(train)} training "
                            f"images by cosine similarity of the features; green: same class, red: another "
                            f"({100 * right:.0f}% of the neighbours shown are right)")
        return [tsne, retrieval]
