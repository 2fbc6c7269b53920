"""The benchmark task suite: real, offline image classification tasks that differ.

Every task is built from files that ship with Debian or PyPI packages, so it
works without network; each says where its images come from and under what
licence. They differ in domain (clothes, handwriting, photographs, clip art,
icons, type), in size (10 to 1,000 labels per class), in native resolution
(8 to 256 px) and in colour (grey, RGB, transparent RGBA):

- fmnist-100, -1000, -10000: 10 classes x 10 / 100 / 1,000 train labels, 28 px grey;
  Debian ``dataset-fashion-mnist`` (Zalando, MIT).
- fmnist-inverted: 10 x 50, the same images inverted at 40% contrast.
- digits: 10 x 100, 8 px, 16 grey levels; scikit-learn ``load_digits`` (UCI, CC BY 4.0).
- photos: 10 x 100 crops (60-100 px, RGB and grey) of scikit-image's sample
  photographs (``skimage.data``: public domain / CC0, per its documentation).
- clipart: 6 categories x 60, RGBA drawings of 60-1,000 px (kept at <= 256);
  clipart-small: six other categories x 20. Debian ``openclipart-png`` (public domain).
- icons: 5 contexts x 30, 128 px RGBA; Debian ``oxygen-icon-theme`` (LGPL-3+).
- scripts: 10 writing systems x 40 letters, 64 px; Debian ``fonts-noto-core`` (OFL-1.1).
- letters: A-J in 30 training fonts, 48 px; Debian ``fonts-dejavu-core`` (Bitstream
  Vera), ``fonts-noto-core`` (OFL-1.1), ``fonts-liberation`` (OFL-1.1),
  ``fonts-urw-base35`` and ``fonts-freefont-ttf`` (AGPL-3 / GPL-3 with font exceptions).

``letters`` trains and tests on different fonts, ``photos`` on disjoint bands
of each photograph, ``icons`` on different icons: no test image shares its
source with a training image. Debian's packages: ``make bench-data``.

    .venv/bin/python benchmarks/tasks.py clipart scripts --to /tmp/suite   # manifests + PNGs
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from transferops.data.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist
from transferops.data.pictures import PictureSettings, to_rgb

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
OPENCLIPART = Path("/usr/share/openclipart/png")
OXYGEN = Path("/usr/share/icons/oxygen/base/128x128")
NOTO = Path("/usr/share/fonts/truetype/noto")
DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
LIBERATION = Path("/usr/share/fonts/truetype/liberation")
URW = Path("/usr/share/fonts/opentype/urw-base35")
FREEFONT = Path("/usr/share/fonts/truetype/freefont")
KEEP_SIDE = 256  # px: larger sources are shrunk once when the task is built (memory)
MAX_SOURCE_PIXELS = 16_000_000
SPLITS = ("train", "val", "test")


class TaskUnavailable(RuntimeError):
    """A task whose source files are not installed; the message says what to install."""


@dataclass
class Task:
    """Images at (close to) their native size, labels, and a fixed split per image."""

    name: str
    note: str
    source: str
    classes: list[str]
    images: list[Image.Image]  # RGB
    labels: np.ndarray
    splits: np.ndarray  # "train" | "val" | "test" per image
    native: list[tuple[int, int]] = field(default_factory=list)  # (w, h) as the files have them

    def part(self, split: str) -> tuple[list[Image.Image], np.ndarray]:
        index = np.flatnonzero(self.splits == split)
        return [self.images[i] for i in index], self.labels[index]

    def sizes(self) -> dict[str, int]:
        return {s: int((self.splits == s).sum()) for s in SPLITS}

    def native_side(self) -> float:
        """Median shorter side of the images as their files hold them (px)."""
        return float(np.median([min(w, h) for w, h in self.native]))


def _task(name: str, note: str, source: str, classes: list[str], parts: dict) -> Task:
    """A task from ``{split: [(image, label index, native size)]}``."""
    images, labels, splits, native = [], [], [], []
    for split in SPLITS:
        for image, label, size in parts.get(split, []):
            images.append(image)
            labels.append(label)
            splits.append(split)
            native.append(size)
    return Task(name, note, source, classes, images, np.asarray(labels), np.asarray(splits), native)


def _deal(
    counts: dict[str, int], per_class: dict[int, list[Path]], rng: np.random.Generator
) -> dict[str, list[tuple[Path, int]]]:
    """Shuffle each class's files and deal ``counts[split]`` of them to each split."""
    parts: dict[str, list] = {s: [] for s in SPLITS}
    for label, files in per_class.items():
        order = rng.permutation(len(files))
        start = 0
        for split in SPLITS:
            parts[split] += [(files[i], label) for i in order[start : start + counts[split]]]
            start += counts[split]
    return parts


def _grey(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels).convert("RGB")


# --------------------------------------------------------------- Fashion-MNIST


def _stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    )


def fashion_mnist(
    per_class: int, seed: int, *, name: str | None = None, look: Callable | None = None
) -> Task:
    """Fashion-MNIST: ``per_class`` train labels, 50 val per class from the training part,
    200 test per class from the official test part."""
    if not FASHION_MNIST.is_dir():
        raise TaskUnavailable("Fashion-MNIST: apt-get install dataset-fashion-mnist")
    images, labels = load_fashion_mnist(FASHION_MNIST, "train")
    test_images, test_labels = load_fashion_mnist(FASHION_MNIST, "t10k")
    rng = np.random.default_rng(seed)
    val = _stratified(labels, 50, rng)
    rest = np.setdiff1d(np.arange(len(labels)), val)
    train = rest[_stratified(labels[rest], per_class, rng)]
    test = _stratified(test_labels, 200, rng)
    look = look or (lambda pixels: pixels)
    parts = {
        split: [(_grey(look(pix[i])), int(lab[i]), (28, 28)) for i in index]
        for split, (pix, lab, index) in {
            "train": (images, labels, train),
            "val": (images, labels, val),
            "test": (test_images, test_labels, test),
        }.items()
    }
    return _task(
        name or f"fmnist-{per_class * 10}",
        f"Fashion-MNIST, {per_class * 10} labels; val 500 (train part), test 2,000 (t10k)",
        "Debian dataset-fashion-mnist (Zalando, MIT)",
        FASHION_MNIST_CLASSES,
        parts,
    )


def inverted_low_contrast(pixels: np.ndarray) -> np.ndarray:
    """White-on-black becomes grey-on-light-grey: inverted, 40% of the contrast."""
    return (200 - 0.4 * pixels.astype(np.float32)).round().astype(np.uint8)


# ------------------------------------------------------------- scikit-learn


def digits(seed: int) -> Task:
    """scikit-learn's 8x8 digits (16 grey levels), kept at their native 8 px."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = (data.images * (255 / 16)).round().astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(data.target))
    split_of = {"train": order[:1000], "val": order[1000:1300], "test": order[1300:]}
    parts = {
        split: [(_grey(pixels[i]), int(data.target[i]), (8, 8)) for i in index]
        for split, index in split_of.items()
    }
    return _task(
        "digits",
        "scikit-learn 8x8 handwritten digits, 16 grey levels: far from ImageNet",
        "scikit-learn load_digits (UCI optical digits, CC BY 4.0)",
        [str(d) for d in range(10)],
        parts,
    )


# ------------------------------------------------------------- scikit-image

PHOTOS = (
    "astronaut",
    "brick",
    "cat",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "immunohistochemistry",
    "rocket",
    "moon",
)


def photos(seed: int) -> Task:
    """Which photograph does a crop come from? Crops keep their native 60-100 px; train,
    val and test come from disjoint horizontal bands (top 60%, next 20%, last 20%)."""
    import skimage.data

    rng = np.random.default_rng(seed)
    bands = {"train": (0.0, 0.6, 100), "val": (0.6, 0.8, 30), "test": (0.8, 1.0, 100)}
    parts: dict[str, list] = {split: [] for split in bands}
    for label, name in enumerate(PHOTOS):
        photo = np.asarray(getattr(skimage.data, name)())
        photo = np.stack([photo] * 3, -1) if photo.ndim == 2 else photo[..., :3]
        height, width = photo.shape[:2]
        for split, (top, bottom, count) in bands.items():
            y0, y1 = int(top * height), int(bottom * height)
            for _ in range(count):
                crop = min(int(rng.uniform(0.12, 0.2) * min(height, width)), y1 - y0)
                y = rng.integers(y0, y1 - crop + 1)
                x = rng.integers(0, width - crop + 1)
                patch = Image.fromarray(photo[y : y + crop, x : x + crop])
                parts[split].append((patch, label, patch.size))
    return _task(
        "photos",
        "crops of 10 scikit-image sample photographs (which photo?): close to ImageNet",
        "scikit-image skimage.data sample images (public domain / CC0, per skimage.data's docs)",
        list(PHOTOS),
        parts,
    )


# ----------------------------------------------------------- Debian clip art

CLIPART = ("animals", "food", "people", "transportation", "tools", "office")
CLIPART_SMALL = ("computer", "signs_and_symbols", "recreation", "geography", "plants", "buildings")


def _load_parts(parts: dict[str, list[tuple[Path, int]]]) -> dict[str, list]:
    """``{split: [(image, label, native size)]}``: each file flattened and shrunk once."""
    settings = PictureSettings()
    loaded: dict[str, list] = {}
    for split, items in parts.items():
        loaded[split] = []
        for path, label in items:
            with Image.open(path) as image:
                size = image.size
                image.draft(None, (KEEP_SIDE, KEEP_SIDE))
                rgb = to_rgb(image, settings)
            rgb.thumbnail((KEEP_SIDE, KEEP_SIDE), Image.Resampling.LANCZOS)
            loaded[split].append((rgb, label, size))
    return loaded


def _small_enough(path: Path) -> bool:
    """Skip the few giant sheets (up to 170 Mpx) that a data check would refuse anyway."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                return image.width * image.height <= MAX_SOURCE_PIXELS
        except Image.DecompressionBombError:
            return False


def clipart(
    seed: int, categories: tuple[str, ...] = CLIPART, counts: tuple[int, int, int] = (60, 20, 60)
) -> Task:
    """Open Clip Art Library drawings by category (RGBA, flattened on white)."""
    if not OPENCLIPART.is_dir():
        raise TaskUnavailable("clip art: apt-get install openclipart-png")
    rng = np.random.default_rng(seed)
    per_class = {
        label: [p for p in sorted((OPENCLIPART / category).rglob("*.png")) if _small_enough(p)]
        for label, category in enumerate(categories)
    }
    parts = _deal(dict(zip(SPLITS, counts, strict=True)), per_class, rng)
    small = counts[0] < 40
    return _task(
        "clipart-small" if small else "clipart",
        f"Open Clip Art drawings, {len(categories)} categories, {counts[0]} train per class",
        "Debian openclipart-png (public domain dedication)",
        list(categories),
        _load_parts(parts),
    )


ICON_CONTEXTS = ("actions", "apps", "devices", "mimetypes", "places")


def icons(seed: int, counts: tuple[int, int, int] = (30, 10, 19)) -> Task:
    """Which context does an Oxygen icon belong to (an action, an app, a device...)?"""
    if not OXYGEN.is_dir():
        raise TaskUnavailable("icons: apt-get install oxygen-icon-theme")
    rng = np.random.default_rng(seed)
    per_class = {
        label: sorted((OXYGEN / context).glob("*.png"))
        for label, context in enumerate(ICON_CONTEXTS)
    }
    parts = _deal(dict(zip(SPLITS, counts, strict=True)), per_class, rng)
    return _task(
        "icons",
        "Oxygen icons at 128 px by context (actions, apps, devices, mimetypes, places)",
        "Debian oxygen-icon-theme (LGPL-3+)",
        list(ICON_CONTEXTS),
        _load_parts(parts),
    )


# --------------------------------------------------------------- Debian fonts

SCRIPTS: dict[str, tuple[list[tuple[int, int]], list[str]]] = {
    "latin": ([(0x41, 0x5A), (0x61, 0x7A)], ["NotoSans-*", "NotoSerif-*"]),
    "greek": ([(0x391, 0x3A9), (0x3B1, 0x3C9)], ["NotoSans-*", "NotoSerif-*"]),
    "cyrillic": ([(0x410, 0x44F)], ["NotoSans-*", "NotoSerif-*"]),
    "arabic": ([(0x627, 0x64A)], ["NotoSansArabic-*", "NotoNaskhArabic-*", "NotoKufiArabic-*"]),
    "hebrew": ([(0x5D0, 0x5EA)], ["NotoSansHebrew-*", "NotoSerifHebrew-*", "NotoRashiHebrew-*"]),
    "devanagari": ([(0x905, 0x939)], ["NotoSansDevanagari-*", "NotoSerifDevanagari-*"]),
    "thai": ([(0xE01, 0xE2E)], ["NotoSansThai-*", "NotoSerifThai-*", "NotoLoopedThai-*"]),
    "georgian": ([(0x10D0, 0x10F0)], ["NotoSansGeorgian-*", "NotoSerifGeorgian-*"]),
    "armenian": ([(0x531, 0x556), (0x561, 0x586)], ["NotoSansArmenian-*", "NotoSerifArmenian-*"]),
    "ethiopic": ([(0x1200, 0x1357)], ["NotoSansEthiopic-*", "NotoSerifEthiopic-*"]),
}


def _render(text: str, font_path: Path, side: int, rng: np.random.Generator) -> Image.Image | None:
    """One glyph, dark on light, at a random size, offset and slight rotation; None if blank."""
    font = ImageFont.truetype(str(font_path), int(side * rng.uniform(0.45, 0.75)))
    canvas = Image.new("L", (side * 2, side * 2), 255)
    ImageDraw.Draw(canvas).text((side, side), text, font=font, fill=0, anchor="mm")
    box = Image.eval(canvas, lambda v: 255 - v).getbbox()
    if box is None or box[2] - box[0] < 3 or box[3] - box[1] < 3:
        return None
    canvas = canvas.rotate(rng.uniform(-10, 10), fillcolor=255)
    dx, dy = rng.integers(-side // 8, side // 8 + 1, size=2)
    left, top = side // 2 + dx, side // 2 + dy
    return canvas.crop((left, top, left + side, top + side)).convert("RGB")


def _fonts(patterns: list[str]) -> list[Path]:
    return sorted(p for pattern in patterns for p in NOTO.glob(f"{pattern}.ttf"))


def scripts(seed: int, counts: tuple[int, int, int] = (40, 20, 60), side: int = 64) -> Task:
    """Which writing system is this letter from? Noto fonts, random letters of each script."""
    if not NOTO.is_dir():
        raise TaskUnavailable("scripts: apt-get install fonts-noto-core")
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {s: [] for s in SPLITS}
    for label, (ranges, patterns) in enumerate(SCRIPTS.values()):
        fonts = _fonts(patterns)
        letters = [chr(c) for low, high in ranges for c in range(low, high + 1)]
        for split, count in zip(SPLITS, counts, strict=True):
            made = 0
            while made < count:
                glyph = _render(
                    letters[rng.integers(len(letters))], fonts[rng.integers(len(fonts))], side, rng
                )
                if glyph is not None:
                    parts[split].append((glyph, label, (side, side)))
                    made += 1
    return _task(
        "scripts",
        "single letters of 10 writing systems, rendered from Noto fonts",
        "Debian fonts-noto-core (SIL OFL 1.1)",
        list(SCRIPTS),
        parts,
    )


def latin_fonts() -> list[Path]:
    """Every Latin text font of the Debian font packages the suite uses."""
    fonts = [
        *DEJAVU.glob("DejaVu*.ttf"),
        *_fonts(["NotoSans-*", "NotoSerif-*", "NotoSansDisplay-*", "NotoSerifDisplay-*"]),
        *LIBERATION.glob("*.ttf"),
        *URW.glob("*.otf"),
        *FREEFONT.glob("*.ttf"),
    ]
    symbols = ("MathTeX", "Dingbats", "Symbol")
    return sorted(f for f in fonts if not any(s in f.name for s in symbols))


def letters(seed: int, side: int = 48) -> Task:
    """Letters A-J, one image per letter per font; train, val and test fonts are disjoint."""
    fonts = latin_fonts()
    if len(fonts) < 80:
        raise TaskUnavailable(
            "letters: apt-get install fonts-noto-core fonts-dejavu-core fonts-liberation "
            "fonts-urw-base35 fonts-freefont-ttf"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(fonts))
    font_split = {"train": order[:30], "val": order[30:45], "test": order[45:]}
    parts: dict[str, list] = {s: [] for s in SPLITS}
    for split, chosen in font_split.items():
        for font in chosen:
            for label, letter in enumerate("ABCDEFGHIJ"):
                glyph = _render(letter, fonts[font], side, rng)
                if glyph is not None:
                    parts[split].append((glyph, label, (side, side)))
    return _task(
        "letters",
        f"letters A-J in {len(fonts)} fonts (DejaVu, Noto); train, val and test fonts disjoint",
        "Debian fonts-dejavu-core (Bitstream Vera licence), fonts-noto-core (SIL OFL 1.1)",
        list("ABCDEFGHIJ"),
        parts,
    )


# ------------------------------------------------------------------ the suite

BUILDERS: dict[str, Callable[[int], Task]] = {
    "fmnist-100": lambda seed: fashion_mnist(10, seed),
    "fmnist-1000": lambda seed: fashion_mnist(100, seed),
    "fmnist-10000": lambda seed: fashion_mnist(1000, seed),
    "fmnist-inverted": lambda seed: fashion_mnist(
        50, seed, name="fmnist-inverted", look=inverted_low_contrast
    ),
    "digits": digits,
    "photos": photos,
    "clipart": clipart,
    "clipart-small": lambda seed: clipart(seed, CLIPART_SMALL, (20, 15, 35)),
    "icons": icons,
    "scripts": scripts,
    "letters": letters,
}


def build(name: str, seed: int) -> Task:
    if name not in BUILDERS:
        raise SystemExit(f"unknown task {name!r}; choose from {sorted(BUILDERS)}")
    return BUILDERS[name](seed)


def export(task: Task, folder: Path) -> Path:
    """Write a task as a manifest (``path,label,split``) beside its images, as PNG.

    ``transferops check|profile|train`` read it like any team's manifest.
    """
    rows = []
    for index, (image, label, split) in enumerate(
        zip(task.images, task.labels, task.splits, strict=True)
    ):
        relative = Path("images") / split / task.classes[label] / f"{index:05d}.png"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / relative)
        rows.append(f"{relative.as_posix()},{task.classes[label]},{split}")
    manifest = folder / "manifest.csv"
    manifest.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Export suite tasks as manifests + PNG images.")
    parser.add_argument("tasks", nargs="+", choices=sorted(BUILDERS))
    parser.add_argument("--to", type=Path, required=True, help="a folder per task goes here")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    for name in args.tasks:
        print(export(build(name, args.seed), args.to / name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
