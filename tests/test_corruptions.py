"""The five photon-limited corruptions: statistics, Pillow JPEG equality, seeding, workers, errors, show grid."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from sharpdro import config
from sharpdro.data import corruptions as C
from sharpdro.data.corruptions import CorruptionError, corrupt, corrupt_by_severity, resolve_table
from sharpdro.errors import SharpDROError

NOISES = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")


def grey(n, side, value):
    return np.full((n, side, side, 3), value, dtype=np.uint8)


def smooth_images(n, side, seed=0):
    """Natural-ish images: 4x4-upsampled random colours, light enough for JPEG to behave like on photos."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, side // 4, side // 4, 3), dtype=np.uint8)
    return np.ascontiguousarray(base.repeat(4, axis=1).repeat(4, axis=2))


def truncated_std(sigma, a, b):
    """Std of N(0, sigma) restricted to [a, b)."""
    al, be = a / sigma, b / sigma
    phi = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    Phi = lambda t: 0.5 * (1 + math.erf(t / math.sqrt(2)))  # noqa: E731
    z = Phi(be) - Phi(al)
    m = (phi(al) - phi(be)) / z
    return sigma * math.sqrt(1 + (al * phi(al) - be * phi(be)) / z - m * m)


def interior_residual_std(out, x):
    """Std of out/255 - x over values not clipped (1..254), and the [a, b) window of noise they cover."""
    o = out.reshape(-1)
    keep = (o >= 1) & (o <= 254)
    r = o[keep] / 255.0 - x
    return r.std(), 1 / 255 - x, 1 - x


# ------------------------------------------------------------------ constants and tables


def test_names_and_tables_match_config_and_papers():
    assert config.CORRUPTIONS == C.CORRUPTIONS + ("none",)  # none: groups from the data, nothing corrupted
    assert set(C.TABLES) == {"cifar", "imagenet"}
    for t in C.TABLES.values():
        assert set(t) == set(C.CORRUPTIONS) and all(len(v) == 5 for v in t.values())
    assert C.severity_parameter("gaussian_noise", 3, "cifar") == 0.08
    assert C.severity_parameter("shot_noise", 1, "imagenet") == 60
    assert C.severity_parameter("impulse_noise", 5, "imagenet") == 0.27
    assert C.severity_parameter("speckle_noise", 2, "cifar") == 0.1
    assert C.severity_parameter("jpeg_compression", 5, "cifar") == 40
    assert C.severity_parameter("jpeg_compression", 0, "cifar") is None
    with pytest.raises(CorruptionError):
        C.severity_parameter("gaussian_noise", 1, "auto")


def test_auto_table_by_image_size():
    assert resolve_table("auto", 32) == "cifar"
    assert resolve_table("auto", 8) == "cifar"
    assert resolve_table("auto", 33) == "imagenet"
    assert resolve_table("auto", (32, 64)) == "imagenet"
    assert resolve_table("imagenet", 32) == "imagenet"
    assert resolve_table("cifar", 224) == "cifar"
    small, large = smooth_images(4, 32), smooth_images(2, 48)
    assert np.array_equal(corrupt(small, "gaussian_noise", 2, 5), corrupt(small, "gaussian_noise", 2, 5, "cifar"))
    assert np.array_equal(corrupt(large, "gaussian_noise", 2, 5), corrupt(large, "gaussian_noise", 2, 5, "imagenet"))
    assert not np.array_equal(corrupt(small, "gaussian_noise", 2, 5, "cifar"),
                              corrupt(small, "gaussian_noise", 2, 5, "imagenet"))


# ------------------------------------------------------------------ statistics of each corruption


@pytest.mark.parametrize("table", ["cifar", "imagenet"])
def test_gaussian_residual_std(table):
    x = 128 / 255
    images = grey(64, 32, 128)  # 196,608 values
    for s in range(1, 6):
        c = C.TABLES[table]["gaussian_noise"][s - 1]
        out = corrupt(images, "gaussian_noise", s, seed=s, table=table)
        std, a, b = interior_residual_std(out, x)
        expected = math.sqrt(truncated_std(c, a, b) ** 2 + 1 / (12 * 255**2))  # + truncation to integers
        assert abs(std / expected - 1) < 0.01, (table, s, std, expected)
        if table == "cifar":  # no clipping at mid-grey: residual mean is the truncation bias -0.5/255
            r = out / 255.0 - x
            assert abs(r.mean() + 0.5 / 255) < 5 * c / math.sqrt(r.size) + 0.02 / 255, (s, r.mean() * 255)


@pytest.mark.parametrize("table", ["cifar", "imagenet"])
def test_speckle_residual_std_proportional_to_x(table):
    for value in (40, 120):
        x = value / 255
        images = grey(64, 32, value)
        for s in (1, 3, 5):
            c = C.TABLES[table]["speckle_noise"][s - 1]
            out = corrupt(images, "speckle_noise", s, seed=10 + s, table=table)
            std, a, b = interior_residual_std(out, x)
            expected = math.sqrt(truncated_std(c * x, a, b) ** 2 + 1 / (12 * 255**2))
            assert abs(std / expected - 1) < 0.015, (table, value, s, std, expected)
    # unclipped regime: the residual std scales with x (3x brighter -> 3x the noise)
    r = [corrupt(grey(64, 32, v), "speckle_noise", 1, seed=3, table="cifar") / 255.0 - v / 255 for v in (40, 120)]
    assert abs((r[1].std() / r[0].std()) / 3.0 - 1) < 0.02


def test_shot_noise_is_poisson_imagenet_table():
    # c <= 255: k -> uint8(k/c*255) is one-to-one on 0..c, so the Poisson draw k can be read back exactly.
    x = 128 / 255
    images = grey(64, 32, 128)
    for s in range(1, 6):
        c = C.TABLES["imagenet"]["shot_noise"][s - 1]
        out = corrupt(images, "shot_noise", s, seed=20 + s, table="imagenet").reshape(-1)
        lut = (np.clip(np.arange(c + 1) / c, 0, 1) * 255).astype(np.uint8)
        assert np.isin(out, lut).all()
        k = np.searchsorted(lut, out)
        lam = x * c
        freq = np.bincount(k, minlength=c + 1) / k.size
        pmf = np.array([math.exp(-lam) * lam**j / math.factorial(j) for j in range(c)])
        pmf = np.append(pmf, 1 - pmf.sum())  # k >= c is clipped to c
        se = np.sqrt(pmf * (1 - pmf) / k.size)
        assert np.all(np.abs(freq - pmf) <= 5 * se + 1e-9), (s, freq, pmf)
        if lam + 6 * math.sqrt(lam) < c:  # clipping negligible: mean and variance of Poisson(lam)
            assert abs(k.mean() - lam) < 5 * math.sqrt(lam / k.size)
            assert abs(k.var() / lam - 1) < 0.02


def test_shot_noise_mean_and_variance_cifar_table():
    x = 128 / 255
    images = grey(64, 32, 128)
    for s in range(1, 6):
        c = C.TABLES["cifar"]["shot_noise"][s - 1]
        y = corrupt(images, "shot_noise", s, seed=30 + s, table="cifar").reshape(-1) / 255.0
        # y = floor(255 k / c) / 255 with k ~ Poisson(x c): mean x - (truncation ~ 0.5/255), var x / c + 1/(12 255^2)
        assert abs(y.mean() - (x - 0.5 / 255)) < 0.25 / 255
        assert abs(y.var() / (x / c + 1 / (12 * 255**2)) - 1) < 0.03, (s, y.var(), x / c)


@pytest.mark.parametrize("table", ["cifar", "imagenet"])
def test_impulse_noise_fraction_and_values(table):
    images = grey(64, 32, 128)
    for s in (1, 3, 5):
        p = C.TABLES[table]["impulse_noise"][s - 1]
        out = corrupt(images, "impulse_noise", s, seed=40 + s, table=table)
        changed = out != 128
        assert set(np.unique(out[changed]).tolist()) <= {0, 255}
        n = changed.size
        assert abs(changed.mean() - p) < 5 * math.sqrt(p * (1 - p) / n)
        salt = (out == 255).sum() / changed.sum()
        assert abs(salt - 0.5) < 5 * math.sqrt(0.25 / changed.sum())
        # each channel value independently: pixels with all three channels hit are rare (p^3), not p
        per_pixel = changed.sum(axis=-1)
        assert abs((per_pixel == 1).mean() - 3 * p * (1 - p) ** 2) < 5 * math.sqrt(3 * p / per_pixel.size)
        assert (per_pixel == 3).mean() < p**3 * 3 + 1e-4


@pytest.mark.parametrize("side", [32, 48])
def test_jpeg_equals_pillow_round_trip(side):
    images = smooth_images(12, side, seed=side)
    images[:4] = np.random.default_rng(1).integers(0, 256, images[:4].shape, dtype=np.uint8)  # and pure noise
    table = resolve_table("auto", side)
    for s in (1, 3, 5):
        q = C.TABLES[table]["jpeg_compression"][s - 1]
        out = corrupt(images, "jpeg_compression", s, seed=0)
        for img, got in zip(images, out):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=q)
            buf.seek(0)
            expected = np.asarray(Image.open(buf).convert("RGB"))
            assert np.array_equal(got, expected)


def test_error_grows_with_severity():
    for table, side in (("cifar", 32), ("imagenet", 48)):
        images = smooth_images(48, side, seed=7)
        for name in C.CORRUPTIONS:
            err = [np.abs(corrupt(images, name, s, seed=1, table=table).astype(np.int16) - images).mean()
                   for s in range(6)]
            assert err[0] == 0
            assert all(a < b for a, b in zip(err, err[1:])), (table, name, err)


# ------------------------------------------------------------------ determinism and API


def test_severity_zero_is_an_exact_copy():
    images = smooth_images(5, 32)
    for name in C.CORRUPTIONS:
        out = corrupt(images, name, 0, seed=0)
        assert out is not images and out.dtype == np.uint8 and np.array_equal(out, images)
        assert not np.shares_memory(out, images)
    single = corrupt(images[0], "gaussian_noise", 0, seed=0)
    assert single.shape == (32, 32, 3) and np.array_equal(single, images[0])


def test_seed_determinism_and_single_image():
    images = smooth_images(16, 32)
    before = images.copy()
    for name in C.CORRUPTIONS:
        a = corrupt(images, name, 3, seed=123)
        b = corrupt(images, name, 3, seed=123)
        assert a.shape == images.shape and a.dtype == np.uint8
        assert np.array_equal(a, b)
        if name != "jpeg_compression":  # deterministic by nature
            assert not np.array_equal(a, corrupt(images, name, 3, seed=124))
    assert np.array_equal(images, before)  # input untouched
    ss = np.random.SeedSequence(123)
    a1 = corrupt(images, "gaussian_noise", 2, seed=ss)
    a2 = corrupt(images, "gaussian_noise", 2, seed=ss)  # the SeedSequence is not advanced
    assert np.array_equal(a1, a2) and np.array_equal(a1, corrupt(images, "gaussian_noise", 2, seed=123))
    one = corrupt(images[3], "shot_noise", 2, seed=9)
    assert one.shape == (32, 32, 3) and one.dtype == np.uint8


def test_result_does_not_depend_on_workers():
    images = np.random.default_rng(5).integers(0, 256, (4200, 32, 32, 3), dtype=np.uint8)  # 3 chunks
    for name in NOISES:
        ref = corrupt(images, name, 4, seed=77, workers=1)
        assert np.array_equal(ref, corrupt(images, name, 4, seed=77, workers=3)), name
    small = smooth_images(20, 32)
    assert np.array_equal(corrupt(small, "jpeg_compression", 2, 0, workers=1),
                          corrupt(small, "jpeg_compression", 2, 0, workers=2))


def test_corrupt_by_severity():
    images = smooth_images(60, 32, seed=3)
    sev = np.arange(60) % 6
    out = corrupt_by_severity(images, sev, "gaussian_noise", seed=11)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(out[sev == 0], images[sev == 0])
    for s in range(1, 6):
        group = images[sev == s]
        expected = corrupt(group, "gaussian_noise", s, seed=C.severity_seed(11, s), table="cifar")
        assert np.array_equal(out[sev == s], expected)
    assert np.array_equal(out, corrupt_by_severity(images, sev, "gaussian_noise", seed=11, workers=1))
    assert not np.array_equal(out, corrupt_by_severity(images, sev, "gaussian_noise", seed=12))
    with pytest.raises(CorruptionError):
        corrupt_by_severity(images, np.full(60, 6), "gaussian_noise", seed=0)
    with pytest.raises(CorruptionError):
        corrupt_by_severity(images, sev[:10], "gaussian_noise", seed=0)


def test_errors():
    images = smooth_images(2, 32)
    with pytest.raises(SharpDROError, match="gaussian_noise, shot_noise, impulse_noise"):
        corrupt(images, "fog", 1, seed=0)
    for bad in (6, -1, 2.0, True, "3", None):
        with pytest.raises(CorruptionError, match="severity"):
            corrupt(images, "gaussian_noise", bad, seed=0)
    with pytest.raises(CorruptionError, match="uint8"):
        corrupt(images.astype(np.float32) / 255, "gaussian_noise", 1, seed=0)
    for shape in ((2, 32, 32), (2, 32, 32, 4), (32, 32), (1, 2, 32, 32, 3)):
        with pytest.raises(CorruptionError, match="shape"):
            corrupt(np.zeros(shape, np.uint8), "gaussian_noise", 1, seed=0)
    with pytest.raises(CorruptionError, match="numpy"):
        corrupt(images.tolist(), "gaussian_noise", 1, seed=0)
    for seed in (-1, None, np.random.default_rng(0), 1.5):
        with pytest.raises(CorruptionError, match="seed"):
            corrupt(images, "gaussian_noise", 1, seed=seed)
    with pytest.raises(CorruptionError, match="table"):
        corrupt(images, "gaussian_noise", 1, seed=0, table="tiny")
    with pytest.raises(CorruptionError, match="workers"):
        corrupt(images, "gaussian_noise", 1, seed=0, workers=0)


# ------------------------------------------------------------------ sharpdro show


def test_write_severity_grid(tmp_path):
    from sharpdro.experiments.plots import pick_images, write_severity_grid

    labels = np.array([2, 0, 0, 1, 2, 1, 0])
    assert pick_images(labels, 4).tolist() == [1, 3, 0, 2]
    path = tmp_path / "sub" / "grid.png"
    table = write_severity_grid(smooth_images(3, 32), "impulse_noise", "auto", 0, path, row_labels=["a", "b", "c"])
    assert table == "cifar"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200


def test_show_command(tmp_path):
    pytest.importorskip("sharpdro.data.sources")
    from sharpdro.cli import main

    out = tmp_path / "grid.png"
    assert main(["show", "--corruption", "shot_noise", "--n", "3", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG"
    assert main(["show", "--corruption", "fog", "--out", str(out)]) == 2
