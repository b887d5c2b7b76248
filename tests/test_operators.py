"""Measurement operators: adjoint test, Penrose identities, projection, and each operator's meaning."""
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from noisecorr_app.restoration.operators import (TASKS, CompressiveSensing, GaussianBlur, Inpainting, SuperResolution,
                                                 fwht, gaussian_kernel, make_mask, make_operator, mask_from_image)

# (task, settings) at 32 for everything, and the heavier ones at 256 with batch 1.
CASES_32 = [("sr2", {}), ("sr4", {}), ("sr2", {"mode": "bicubic"}), ("sr4", {"mode": "bicubic"}),
            ("sr", {"factor": 8}), ("inpaint", {"mask": "box"}), ("inpaint", {"mask": "random"}),
            ("inpaint", {"mask": "half"}), ("deblur", {}), ("deblur", {"sigma": 1.0}), ("colorize", {}),
            ("cs", {}), ("cs", {"ratio": 0.1, "seed": 3})]
CASES_256 = [("sr4", {}), ("sr4", {"mode": "bicubic"}), ("inpaint", {"mask": "random"}), ("deblur", {}),
             ("colorize", {}), ("cs", {})]
CASES = [(32, 2, t, s) for t, s in CASES_32] + [(256, 1, t, s) for t, s in CASES_256]
IDS = [f"{n}-{t}-" + "-".join(f"{v}" for v in s.values()) for n, _, t, s in CASES]


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=None)
def _op(task, size, items):
    return make_operator(task, size, **dict(items))


def op_of(size, task, settings):
    return _op(task, size, tuple(sorted(settings.items())))


def rand(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def inner(a, b):
    return float((a * b).sum())


def assert_same(a, b, scale, rel=1e-10):
    assert abs(a - b) <= rel * scale, (a, b, scale)


def spaces(op, size, batch):
    """Random x in image space and y in measurement space (the measurement shape from A)."""
    x = rand((batch, 3, size, size), 0)
    y = rand(op.A(x).shape, 1)
    return x, y


@pytest.mark.parametrize("size,batch,task,settings", CASES, ids=IDS)
def test_adjoint(size, batch, task, settings):
    op = op_of(size, task, settings)
    x, y = spaces(op, size, batch)
    ax, aty = op.A(x), op.At(y)
    assert aty.shape == x.shape
    assert_same(inner(ax, y), inner(x, aty), ax.norm() * y.norm() + x.norm() * aty.norm())


@pytest.mark.parametrize("size,batch,task,settings", CASES, ids=IDS)
def test_penrose_identities(size, batch, task, settings):
    op = op_of(size, task, settings)
    x, y = spaces(op, size, batch)
    ax = op.A(x)
    # A A^+ A = A
    assert (op.A(op.pinv(ax)) - ax).norm() <= 1e-10 * ax.norm()
    # A^+ A A^+ = A^+
    py = op.pinv(y)
    assert py.shape == x.shape
    assert (op.pinv(op.A(py)) - py).norm() <= 1e-10 * py.norm()
    # A A^+ symmetric (measurement space) and A^+ A symmetric (image space)
    u, v = y, rand(y.shape, 2)
    aapu, aapv = op.A(op.pinv(u)), op.A(op.pinv(v))
    assert_same(inner(aapu, v), inner(u, aapv), u.norm() * v.norm())
    x2 = rand(x.shape, 3)
    papx, papx2 = op.pinv(op.A(x)), op.pinv(op.A(x2))
    assert_same(inner(papx, x2), inner(x, papx2), x.norm() * x2.norm())


@pytest.mark.parametrize("size,batch,task,settings", CASES, ids=IDS)
def test_projection_and_view(size, batch, task, settings):
    op = op_of(size, task, settings)
    x_true, _ = spaces(op, size, batch)
    y = op.A(x_true)
    x = rand(x_true.shape, 5)
    p = op.project(x, y)
    c = op.consistency(p, y)
    assert c.shape == (batch,)
    assert float(c.max()) <= 1e-10 * float(y.norm())
    assert float(op.consistency(x_true, y).max()) == pytest.approx(0, abs=1e-12 * float(y.norm()))
    assert (op.project(p, y) - p).norm() <= 1e-10 * p.norm()
    # the projection moves x as little as possible: x - p lies in the range of A^T (A^+ A (x - p) = x - p)
    d = x - p
    assert (op.pinv(op.A(d)) - d).norm() <= 1e-9 * d.norm()
    assert op.view(y).shape == x.shape


@pytest.mark.parametrize("size,batch,task,settings", CASES, ids=IDS)
def test_damped_pinv_caps_the_noise_each_singular_value_passes(size, batch, task, settings):
    """DDNM+'s noisy pseudo-inverse scales the component on singular value s by min(1, tau s): so
    it is A^+ itself for large tau, it passes at most tau times the measurement's norm (min(1/s, tau)
    <= tau per component), it stays in the range of A^T, and it grows with tau."""
    op = op_of(size, task, settings)
    x, y = spaces(op, size, batch)
    big = torch.full((batch,), 1e12, dtype=torch.float64)
    assert (op.pinv_damped(y, big) - op.pinv(y)).norm() <= 1e-10 * op.pinv(y).norm()
    aap_y = op.A(op.pinv(y))                 # y's part in the range of A (what A^+ acts on)
    for tau in (0.05, 0.5, 2.0):
        t = torch.full((batch,), tau, dtype=torch.float64)
        d = op.pinv_damped(y, t)
        assert d.shape == x.shape
        per_image = d.flatten(1).norm(dim=1) / aap_y.flatten(1).norm(dim=1)
        assert float(per_image.max()) <= tau * (1 + 1e-9), (tau, per_image)
        assert (op.pinv(op.A(d)) - d).norm() <= 1e-9 * d.norm()
    weak, strong = (op.pinv_damped(y, torch.full((batch,), t, dtype=torch.float64)).norm() for t in (0.1, 1.0))
    assert weak < strong
    if batch > 1:                            # tau is per image
        mixed = op.pinv_damped(y, torch.tensor([0.1, 1e12], dtype=torch.float64))
        assert torch.allclose(mixed[1], op.pinv(y)[1]) and mixed[0].norm() < op.pinv(y)[0].norm()


@pytest.mark.parametrize("size,batch,task,settings", CASES[:3] + CASES[8:9] + CASES[-3:], ids=IDS[:3] + IDS[8:9] + IDS[-3:])
def test_float32_follows_input(size, batch, task, settings):
    op = op_of(size, task, settings)
    x = rand((batch, 3, size, size), 0).float()
    y = op.A(x)
    for out in (y, op.At(y), op.pinv(y), op.view(y), op.project(x, y)):
        assert out.dtype == torch.float32 and out.device == x.device
    assert float(op.consistency(op.project(x, y), y).max()) <= 1e-3 * float(y.norm())


# ---------------------------------------------------------------- super-resolution

def test_avgpool_closed_forms():
    op = SuperResolution(4)
    x = rand((2, 3, 32, 32), 0)
    y = op.A(x)
    torch.testing.assert_close(y, F.avg_pool2d(x, 4))
    torch.testing.assert_close(op.pinv(y), F.interpolate(y, scale_factor=4, mode="nearest"))
    torch.testing.assert_close(op.A(op.At(y)), y / 16)
    assert op.view(y).shape == x.shape


@pytest.mark.parametrize("factor", [2, 4])
def test_bicubic_matches_torch_antialiased_bicubic_inside(factor):
    x = rand((1, 3, 64, 64), 0)
    y = SuperResolution(factor, "bicubic").A(x)
    ref = F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True)
    # torch renormalises at the border instead of mirroring, so compare away from it
    torch.testing.assert_close(y[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], atol=1e-12, rtol=0)
    torch.testing.assert_close(SuperResolution(factor, "bicubic").A(torch.ones(1, 1, 64, 64, dtype=torch.float64)),
                               torch.ones(1, 1, 64 // factor, 64 // factor, dtype=torch.float64))


# ---------------------------------------------------------------- deblurring

def test_blur_spreads_a_delta_with_the_gaussian_kernel():
    op = op_of(32, "deblur", {})
    n = 32
    k = gaussian_kernel(3.0, 19)
    delta = torch.zeros(1, 3, n, n, dtype=torch.float64)
    delta[..., 16, 13] = 1
    out = op.A(delta)
    psf = out[0, 0, 16 - 9:16 + 10, 13 - 9:13 + 10]
    assert float(psf.sum()) == pytest.approx(1, abs=2e-3)
    torch.testing.assert_close(psf, psf.flip(0), atol=2e-3, rtol=0)
    torch.testing.assert_close(psf, psf.flip(1), atol=2e-3, rtol=0)
    torch.testing.assert_close(psf, psf.T, atol=2e-3, rtol=0)
    # it is the stated kernel: the whole response is k k^T up to the truncation (<= rtol in L2)
    ref = torch.zeros(n, n, dtype=torch.float64)
    ref[16 - 9:16 + 10, 13 - 9:13 + 10] = k[:, None] * k[None, :]
    assert float((out[0, 0] - ref).norm()) <= 1e-3
    assert float(psf[9, 9]) == float(out[0, 0].max())          # centred, not shifted (DDRM's dropped tap)
    for c in (1, 2):                                             # same blur on every channel (DDRM's ordering bug)
        torch.testing.assert_close(out[0, c], out[0, 0], atol=1e-14, rtol=0)


@pytest.mark.parametrize("size", [32, 256])
def test_blur_matches_direct_convolution_with_mirror_boundary(size):
    sigma = 3.0
    op = op_of(size, "deblur", {})
    x = rand((1, 3, size, size), 7)
    k = gaussian_kernel(sigma, 19)
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (9, 9), (9, 9)), mode="symmetric"))
    ref = F.conv2d(F.conv2d(padded, k.view(1, 1, 19, 1).expand(3, 1, 19, 1), groups=3),
                   k.view(1, 1, 1, 19).expand(3, 1, 1, 19), groups=3)
    # A is the truncated-SVD blur: it differs from the plain blur by at most rtol in operator norm
    assert float((op.A(x) - ref).norm()) <= 1.0001e-3 * float(x.norm())
    torch.testing.assert_close(op.A(x.transpose(-1, -2)), op.A(x).transpose(-1, -2))
    torch.testing.assert_close(op.A(torch.ones_like(x)), torch.ones_like(x))   # constants stay constant


@pytest.mark.parametrize("size,tol", [(32, 5e-2), (256, 3e-3)])
def test_blur_is_mostly_invertible_on_smooth_images(size, tol):
    op = op_of(size, "deblur", {})
    t = torch.arange(size, dtype=torch.float64) / size
    i, j = t[:, None], t[None, :]
    img = torch.stack([torch.sin(2 * math.pi * 1.3 * i + 0.4) * torch.cos(2 * math.pi * 0.7 * j),
                       0.5 * torch.exp(-((i - 0.4) ** 2 + (j - 0.6) ** 2) / (2 * 0.15 ** 2)),
                       0.3 * i - 0.6 * j * j])[None]
    rec = op.pinv(op.A(img))
    # sigma = 3 keeps ~12% of the spectrum; what is lost is the mirror-boundary kink's tail,
    # which shrinks as the image grows (2.4% at 32, 0.2% at 256)
    assert float((rec - img).norm() / img.norm()) < tol
    white = rand(img.shape, 0)                                   # ... but not on white noise
    assert float((op.pinv(op.A(white)) - white).norm() / white.norm()) > 0.5


def test_box_projection_reaches_consistency_where_plain_alternation_stalls():
    """Deblurring saturated images: the valid point (A x = y, pixels in [-1, 1]) sits on the box's
    faces, where plain alternating projections crawl along the blur's weak singular values."""
    size = 32
    op = op_of(size, "deblur", {})
    t = torch.arange(size, dtype=torch.float64) / size
    i, j = t[:, None] + 0 * t, 0 * t[:, None] + t
    smooth = torch.stack([2 * torch.sin(2 * math.pi * 1.3 * i + 0.4) * torch.cos(2 * math.pi * 0.7 * j),
                          1.5 * torch.cos(2 * math.pi * (i + j)), 3 * (i - 0.5)]).clamp(-1, 1)
    sharp = ((i > 0.5) ^ (j > 0.3)).double().mul(2).sub(1).expand(3, size, size)
    truth = torch.stack([smooth, sharp])
    y = op.A(truth)
    start = truth + 0.5 * rand(truth.shape, 0)

    out = op.project_box(start, y)
    assert float(out.abs().max()) <= 1.0
    assert float(op.consistency(out, y).max()) < 1e-3

    plain = start.clamp(-1, 1)                                   # what the method replaced, for scale
    for _ in range(300):
        plain = (plain - op.pinv(op.A(plain) - y)).clamp(-1, 1)
    assert float(op.consistency(plain, y).min()) > 5e-3

def test_blur_kernel_size():
    assert GaussianBlur(3.0).kernel(256).numel() == 19
    assert GaussianBlur(3.0, kernel_size=7).kernel(256).numel() == 7
    assert GaussianBlur(20.0).kernel(32).numel() == 31          # capped at the image
    assert float(GaussianBlur(2.0).kernel(64).sum()) == pytest.approx(1)
    with pytest.raises(ValueError, match="odd"):
        GaussianBlur(3.0, kernel_size=8)


# ---------------------------------------------------------------- colorization, CS

def test_colorization_closed_forms():
    op = make_operator("colorize", 32)
    x = rand((2, 3, 32, 32), 0)
    y = op.A(x)
    assert y.shape == (2, 1, 32, 32)
    torch.testing.assert_close(y, x.mean(1, keepdim=True))
    torch.testing.assert_close(op.pinv(y), y.expand(-1, 3, -1, -1))
    torch.testing.assert_close(op.view(y), y.expand(-1, 3, -1, -1))


def test_fwht_is_the_orthonormal_hadamard_matrix():
    h = torch.ones(1, 1, dtype=torch.float64)
    for _ in range(6):                                           # Sylvester construction, n = 64
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    torch.testing.assert_close(fwht(torch.eye(64, dtype=torch.float64)), h / 8)
    v = rand((3, 1024), 0)
    torch.testing.assert_close(fwht(fwht(v)), v)


def test_cs_rows_are_orthonormal():
    op = CompressiveSensing(0.25, seed=0, image_size=32)
    assert op.m == 256
    y = rand((2, 3, op.m), 0)
    torch.testing.assert_close(op.A(op.At(y)), y)                # A A^T = I
    assert op.A(rand((2, 3, 32, 32), 1)).shape == (2, 3, 256)
    assert not torch.equal(op.rows(), CompressiveSensing(0.25, seed=1, image_size=32).rows())
    assert torch.equal(op.rows(), CompressiveSensing(0.25, seed=0, image_size=32).rows())


# ---------------------------------------------------------------- masks

def test_mask_kinds_keep_the_intended_fractions():
    assert float(make_mask("box", 32).double().mean()) == pytest.approx(0.75)
    assert float(make_mask("box", 256, box=0.25).double().mean()) == pytest.approx(1 - 1 / 16)
    box = make_mask("box", 32)
    assert not box[16, 16] and box[0, 0] and box[31, 31]
    assert float(make_mask("random", 32).double().mean()) == pytest.approx(round(0.2 * 1024) / 1024)
    assert float(make_mask("random", 256, keep=0.5, seed=1).double().mean()) == pytest.approx(0.5)
    assert not torch.equal(make_mask("random", 32, seed=0), make_mask("random", 32, seed=1))
    half = make_mask("half", 32)
    assert half[:, :16].all() and not half[:, 16:].any()
    with pytest.raises(ValueError, match="valid kinds"):
        make_mask("circle", 32)
    with pytest.raises(ValueError, match="keep"):
        make_mask("random", 32, keep=1.5)


def test_mask_from_rgba_drawing():
    from PIL import Image

    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 255                                          # colour without alpha is not a stroke
    rgba[10:30, 20:40, 3] = 255                                  # the stroke
    keep = mask_from_image(Image.fromarray(rgba, "RGBA"), 32)
    assert keep.shape == (32, 32) and keep.dtype == torch.bool
    assert not keep[5:15, 10:20].any()
    assert keep[:5].all() and keep[15:].all() and keep[:, :10].all() and keep[:, 20:].all()
    assert torch.equal(mask_from_image(rgba, 32), keep)          # the same as an array
    grey = np.zeros((32, 32), np.uint8)
    grey[:, :8] = 200                                            # white strokes on black, no alpha
    assert torch.equal(mask_from_image(Image.fromarray(grey), 32), ~(torch.arange(32) < 8).expand(32, 32))
    op = make_operator("inpaint", 32, drawing=Image.fromarray(rgba, "RGBA"))
    assert torch.equal(op.mask[0], keep)


def test_inpainting_accepts_mask_shapes_and_edge_cases():
    m = make_mask("half", 32)
    for shape in [(32, 32), (1, 32, 32), (3, 32, 32), (1, 1, 32, 32)]:
        op = Inpainting(m.expand(shape).float().numpy() if len(shape) == 3 else m.reshape(shape))
        assert op.kept_fraction == pytest.approx(0.5)
    x = rand((1, 3, 32, 32), 0)
    empty = Inpainting(torch.zeros(32, 32))
    assert torch.equal(empty.pinv(empty.A(x)), torch.zeros_like(x))
    full = Inpainting(torch.ones(32, 32, dtype=torch.bool))
    torch.testing.assert_close(full.project(rand(x.shape, 1), x), x)
    with pytest.raises(ValueError, match="0 .*1"):
        Inpainting(torch.full((32, 32), 0.5))


# ---------------------------------------------------------------- factory

@pytest.mark.parametrize("task,settings,message", [
    ("denoise", {}, "valid tasks: sr2, sr4, sr, inpaint, deblur, colorize, cs"),
    ("deblur", {"sigma": 0}, "sigma"),
    ("deblur", {"sigma": 25}, r"\(0, 20\]"),
    ("deblur", {"kernel_size": 4}, "odd"),
    ("cs", {"ratio": 0}, r"\(0, 1\]"),
    ("cs", {"ratio": 1.5}, "ratio"),
    ("sr", {"factor": 3}, "does not divide"),
    ("sr", {"factor": 1.5}, "integer"),
    ("sr4", {"mode": "lanczos"}, "avgpool"),
    ("sr4", {"factor": 2}, "unknown setting"),
    ("inpaint", {"mask": torch.ones(16, 16)}, "shape"),
    ("inpaint", {"mask": torch.ones(2, 32, 32)}, "shape"),
    ("inpaint", {"mask": torch.ones(32, 32)}, "the mask hides nothing: there is nothing to inpaint"),
    ("inpaint", {"mask": torch.zeros(32, 32)}, "the mask hides the whole image"),
    ("inpaint", {"mask": "random", "keep": 0.0}, "the mask hides the whole image"),
    ("inpaint", {"mask": "box", "box": 0.0}, "hides nothing"),
    ("inpaint", {"drawing": np.zeros((64, 64, 4), np.uint8)}, "hides nothing"),
    ("inpaint", {"mask": "star"}, "valid kinds"),
])
def test_factory_errors(task, settings, message):
    with pytest.raises(ValueError, match=message):
        make_operator(task, 32, **settings)


def test_factory_size_errors_and_defaults():
    with pytest.raises(ValueError, match="power-of-two"):
        make_operator("cs", 48)
    with pytest.raises(ValueError, match="power of two"):
        CompressiveSensing(0.25, image_size=48)
    with pytest.raises(ValueError, match="single channel"):
        make_operator("colorize", 32, channels=1)
    assert make_operator("sr", 64).factor == 4
    assert make_operator("sr2", 64).mode == "avgpool"
    assert make_operator("deblur", 64).sigma == 3.0
    assert make_operator("cs", 64).ratio == 0.25
    assert make_operator("inpaint", 64).kept_fraction == pytest.approx(0.75)
    assert set(TASKS) == {"sr2", "sr4", "sr", "inpaint", "deblur", "colorize", "cs"}
    assert all(isinstance(v, str) and v for v in TASKS.values())
