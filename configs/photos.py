"""Real colour photographs of any size, 8-bit: random 32x32 crops of each training photo, drawn
afresh every epoch, modelled with a discretised mixture of 5 logistics per sub-pixel, in bits/dim.

The photos are not resized: each epoch trains on 512 new crops of each training photo
(data.crops_per_image, from data.crop_seed and the epoch); validation and test are the held-out
photos (about 15% each, by a hash of the file's name), each cut into the non-overlapping 32x32
tiles covering its centre. The folder is `make photos`'s: 25 photographs from Debian's wallpaper
packages (scripts/gather_photos.py), 18 of which train, 4 validate and 3 test. The model is the
one-level VAE on gated MLPs (3072-512-512, mirrored), z = 64: on a CPU an MLP trains many times
faster than the conv VAE on 32x32 colour images (docs/configs.md). 20 epochs, sized for about 10
minutes on a 2-core CPU, the KL warmed up over 2, the best validation epoch kept; --config.data.
tile_stride=32,32 --config.data.crops_per_image=0 trains on fixed tiles instead.

    make photos        # or: python scripts/gather_photos.py --out DIR, then --config.data.name=folder:DIR
    python scripts/train.py --config configs/photos.py --workdir runs/photos
    python scripts/evaluate.py --workdir runs/photos --iw_samples 100
    python scripts/compress.py --workdir runs/photos --out runs/photos/test.bbans  # the held-out tiles
"""

import os
from pathlib import Path

from configs import default

# Where `make photos` (scripts/gather_photos.py) puts them.
PHOTOS = Path(os.environ.get("XDG_DATA_HOME") or "~/.local/share") / "vae" / "photos"


def get_config():
    config = default.get_config()
    config.data.name = f"folder:{PHOTOS}"
    config.data.binarize = "none"
    config.data.channels = "rgb"
    config.data.image_size = (32, 32)
    config.data.crops_per_image = 512
    config.data.folder_validation_fraction = 0.15
    config.data.folder_test_fraction = 0.15
    config.data.validation_split = "validation"
    config.model.arch = "mlp"
    config.model.likelihood = "logistic_mixture"
    config.model.mixture_components = 5
    config.model.hidden_dims = (512, 512)
    config.model.latent_dim = 64
    config.train.batch_size = 256
    config.train.learning_rate = 1e-3
    config.train.num_epochs = 20
    config.train.kl_warmup_epochs = 2.0
    config.train.checkpoint_every_epochs = 5
    return config
