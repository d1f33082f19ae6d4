"""CIE Lab colour space in torch, and the quantised ab space of Zhang et al.'s colorization.

The conversion is the standard sRGB (IEC 61966-2-1) -> linear RGB -> CIE XYZ (D65 white) ->
CIE L*a*b* chain, the one OpenCV's ``cv2.COLOR_RGB2Lab`` and scikit-image's ``rgb2lab``
implement (tests/test_pretext.py checks it against OpenCV). Torch, batched, differentiable, on
the images' device: L in [0, 100], a and b roughly in [-110, 110].
"""

from __future__ import annotations

import functools

import torch

# sRGB primaries to XYZ under D65 (IEC 61966-2-1), and the D65 reference white
RGB_TO_XYZ = torch.tensor([
    [0.412453, 0.357580, 0.180423],
    [0.212671, 0.715160, 0.072169],
    [0.019334, 0.119193, 0.950227],
])  # fmt: skip
WHITE_D65 = torch.tensor([0.950456, 1.0, 1.088754])
_EPS = (6 / 29) ** 3
_KAPPA = (29 / 6) ** 2 / 3


def _to_linear(rgb: torch.Tensor) -> torch.Tensor:
    return torch.where(rgb > 0.04045, ((rgb.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92)


def _to_srgb(lin: torch.Tensor) -> torch.Tensor:
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(0.0031308) ** (1 / 2.4) - 0.055, 12.92 * lin)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], (..., 3, H, W) -> CIE Lab (..., 3, H, W) under D65."""
    m = (RGB_TO_XYZ / WHITE_D65[:, None]).to(rgb)
    xyz = torch.einsum("ij,...jhw->...ihw", m, _to_linear(rgb))
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS) ** (1 / 3), _KAPPA * xyz + 4 / 29)
    fx, fy, fz = f.unbind(dim=-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """CIE Lab (..., 3, H, W) -> sRGB (..., 3, H, W); ``clip``: into [0, 1] (out-of-gamut Lab
    values give RGB outside [0, 1] otherwise)."""
    light, a, b = lab.unbind(dim=-3)
    fy = (light + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=-3)
    xyz = torch.where(f > 6 / 29, f**3, (f - 4 / 29) / _KAPPA)
    m = torch.linalg.inv(RGB_TO_XYZ / WHITE_D65[:, None]).to(lab)
    lin = torch.einsum("ij,...jhw->...ihw", m, xyz)
    rgb = _to_srgb(lin)
    return rgb.clamp(0, 1) if clip else rgb


def _cube_surface(levels: int) -> torch.Tensor:
    """(3, 1, 6 levels^2) the six faces of the RGB cube sampled at ``levels`` values per axis:
    the boundary of the sRGB solid, whose Lab image bounds the gamut's projection onto ab."""
    v = torch.linspace(0, 1, levels)
    u, w = (t.reshape(-1) for t in torch.meshgrid(v, v, indexing="ij"))
    faces = []
    for axis in range(3):
        for value in (0.0, 1.0):
            face = [u, w]
            face.insert(axis, torch.full_like(u, value))
            faces.append(torch.stack(face))
    return torch.cat(faces, dim=1)[:, None]


@functools.cache
def ab_bins(grid: int = 10, levels: int = 256) -> torch.Tensor:
    """The in-gamut quantised ab values of Zhang, Isola, Efros (2016): (Q, 2) float (a, b) grid
    points, multiples of ``grid``, sorted by (a, b); grid 10 gives the paper's Q = 313.

    A grid point is in gamut when one of the four ``grid`` x ``grid`` cells it is a corner of
    meets the convex hull of the ab values of all sRGB colours (any lightness), i.e. when the
    square ``[c - grid, c + grid]^2`` meets that hull. The hull is that of the Lab image of the
    RGB cube's surface sampled at ``levels`` values per channel (scipy's ConvexHull). With this
    rule the points span a in [-90, 100], b in [-110, 100], as the paper's ``pts_in_hull``;
    the plain cell occupancy (nearest grid point of some sRGB colour) gives only 262 bins.
    Cached after the first call (about 0.5 s)."""
    from scipy.spatial import ConvexHull

    ab = rgb_to_lab(_cube_surface(levels).double())[1:].reshape(2, -1).T
    hull = ab[ConvexHull(ab.numpy()).vertices]
    corners = torch.tensor([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=ab.dtype) * grid
    grown = ConvexHull((hull[:, None] + corners).reshape(-1, 2).numpy())  # hull (+) the square
    lo, hi = grown.min_bound // grid * grid, grown.max_bound // grid * grid + grid
    a, b = torch.meshgrid(torch.arange(lo[0], hi[0] + 1, grid), torch.arange(lo[1], hi[1] + 1, grid),
                          indexing="ij")
    points = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1).double()
    eq = torch.from_numpy(grown.equations)  # inside: normal . x + offset <= 0 for every facet
    inside = (points @ eq[:, :2].T + eq[:, 2]).max(dim=1).values <= 1e-9
    return points[inside].float()


def soft_encode(ab: torch.Tensor, bins: torch.Tensor, neighbours: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """Zhang et al.'s soft encoding of ground-truth colours: each ab value (N, 2) becomes a
    distribution over the Q bins (N, Q): its ``neighbours`` nearest bin centres weighted by a
    Gaussian kernel of std ``sigma`` on the distance, normalised to sum to 1."""
    d2 = torch.cdist(ab.float(), bins.to(ab.device)) ** 2
    near_d2, near = d2.topk(neighbours, dim=1, largest=False)
    w = torch.softmax(-near_d2 / (2 * sigma**2), dim=1)
    return torch.zeros_like(d2).scatter_(1, near, w)


def nearest_bin(ab: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """(N,) index of the nearest bin centre of each ab value (N, 2): the hard quantisation."""
    return torch.cdist(ab.float(), bins.to(ab.device)).argmin(dim=1)


def smoothed_prior(counts: torch.Tensor, sigma: float = 5.0, bins: torch.Tensor | None = None) -> torch.Tensor:
    """The empirical bin distribution p~ of Zhang et al.: bin ``counts`` (Q,) normalised, then
    smoothed with a Gaussian kernel of std ``sigma`` in ab space over the ``bins`` centres and
    renormalised (sigma 0 or no ``bins``: no smoothing). float64."""
    p = counts.double() / counts.sum()
    if bins is not None and sigma > 0:
        kernel = torch.exp(-torch.cdist(bins.double(), bins.double()) ** 2 / (2 * sigma**2))
        p = kernel @ p
        p = p / p.sum()
    return p


def rebalance_weights(prior: torch.Tensor, lam: float = 0.5, sigma: float = 5.0,
                      bins: torch.Tensor | None = None) -> torch.Tensor:
    """Zhang et al.'s class-rebalancing weights (eq. 4): w proportional to
    ((1 - lam) p~ + lam / Q)^-1, normalised so that sum_q p~_q w_q = 1, where p~ is the empirical
    bin distribution ``prior`` (Q,) smoothed with a Gaussian kernel of std ``sigma`` in ab space
    (:func:`smoothed_prior`)."""
    p = smoothed_prior(prior, sigma, bins)
    w = 1 / ((1 - lam) * p + lam / len(p))
    return (w / (p * w).sum()).float()


def annealed_mean(logits: torch.Tensor, bins: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
    """Zhang et al.'s decoding (eq. 5): the mean of the temperature-sharpened distribution,
    softmax(log z / T), i.e. softmax(logits / T). logits: (N, Q, ...) -> ab (N, 2, ...)."""
    p = torch.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("nq...,qc->nc...", p, bins.to(logits.device))
