"""Data-preparation tooling, outside the installed package: licence-recorded photographs for MAE training.

Build a folder of real, licence-recorded photographs for training a small Masked Autoencoder.

The photographs come from four Debian packages that are *downloaded and unpacked*, never
installed (``apt-get download`` + ``dpkg-deb -x``):

``gcompris-qt-data``
    Photographs embedded in the Qt resource bundles (``usr/share/gcompris-qt/rcc/*.rcc``,
    read with :mod:`tools.photos.rcc`) of the activities ``categorization``, ``erase``,
    ``explore_monuments``, ``explore_world_animals``, ``explore_farm_animals`` and
    ``explore_world_music``. The bundles ``lang``, ``paintings`` and ``details`` (words,
    paintings and drawings) and every other activity are not read.
``plasma-workspace-wallpapers``
    One image per wallpaper under ``usr/share/wallpapers/<Name>/contents/images/`` (the one
    with the largest resolution).
``mate-backgrounds``
    ``usr/share/backgrounds/mate/nature/*.jpg`` only.
``lomiri-wallpapers-16.04``
    The ``.jpg``/``.png`` files under ``usr/share/backgrounds/``.

Photo rule
----------
An image is kept only if **all** of these hold:

1. its extension is ``.jpg``, ``.jpeg``, ``.png`` or ``.webp`` and PIL decodes it;
2. its short side is at least 200 px;
3. it is not a palette / bilevel image (PIL mode ``P`` or ``1``) and has no transparency
   (an alpha channel whose minimum is below 250);
4. it has a photographic number of tones, measured on a copy whose longer side is 512 px:
   a grey-scale image (mean channel difference below 2 levels) needs at least 64 distinct grey
   levels, a colour image at least 128 distinct colours after quantising each channel to 5 bits
   (flat-colour drawings and icons fall below this);
5. it is not one of the wallpapers listed in :data:`NOT_PHOTOGRAPHS`: digital artwork (vector
   or 3-D renders, paintings) that rule 4 cannot tell from a photograph. That list was made by
   looking at every wallpaper of the Debian 12 (bookworm) versions of the packages.

Licences
--------
GCompris ships, next to its photographs, upstream ``README`` files crediting each image
(author, source URL, licence); they are inside the same ``.rcc`` bundles. When an image is
listed in the nearest such README, that credit is recorded (``licence_basis`` =
``"upstream README (<path>)"``) together with what the Debian copyright file says
(``debian_copyright_licence`` / ``debian_copyright_basis``): the Debian file predates some
image replacements (e.g. its ``fish1.jpg`` paragraph describes a different photograph), so
the README is the more precise source. Otherwise, and for the wallpapers, the Debian file
decides, as follows.

Each package's DEP-5 ``usr/share/doc/<package>/copyright`` is parsed. The image's path
*in the upstream source tree* (for GCompris the resource path without its leading
``gcompris/``, e.g. ``src/activities/erase/resource/calf.webp``; for wallpapers the path below
``usr/share/wallpapers/`` or ``usr/share/backgrounds/[mate/]``) is matched against each
``Files:`` glob; as in DEP-5 the last matching paragraph wins. Because GCompris converted its
images to WebP after writing its copyright file, the extension is ignored when comparing
(``fish1.jpg`` in the copyright file matches ``fish1.webp``). For the wallpaper packages only,
when no specific glob matches, a glob whose file-name part is literal and equal to the image's
file name is accepted (Lomiri lists ``16.04/<name>.jpg`` but installs ``<name>.jpg``).
Failing that, the package's default ``Files: *`` paragraph is used and the manifest says so
(``licence_basis``); an image with no licence at all is left out.

Output
------
``out_dir/train/*.jpg`` and ``out_dir/val/*.jpg`` (RGB, longer side at most ``max_side``,
LANCZOS, JPEG quality 92), ``out_dir/manifest.json`` and ``out_dir/LICENCES.md``.

The split is deterministic: an image goes to ``val`` when
``sha256(f"{seed}:{sha256_of_file_bytes}")`` read as a fraction in [0, 1) is below
``val_fraction``; then, among the large wallpaper photographs, the ones with the lowest such
fractions are moved so that each split holds at least :data:`MIN_LARGE_PER_SPLIT` of them.

Run as ``python -m tools.photos.prepare --out DIR --cache DIR`` from the repository root.
"""
