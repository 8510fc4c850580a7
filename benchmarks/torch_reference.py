"""A PyTorch reference of the default MLP VAE, for the benchmark only (`pip install -e '.[bench]'`).

The same mathematics as vae.model.vae / vae.model.objectives: an MLP encoder to (mean, log-variance), the
reparameterisation trick, a Bernoulli decoder, dynamic binarisation, closed-form KL, Adam. Two
training loops, as people write them:
- idiomatic: a DataLoader over a TensorDataset (shuffle=True), binarised per batch;
- tuned: the data as one tensor indexed by torch.randperm, no DataLoader, binarised by
  rand_like(x) < x (cheaper than torch.bernoulli), fused Adam, flush-denormal on. Each of these
  was measured to pay on a 2-core CPU.
"""

import time

import numpy as np


def _torch():
    import torch

    return torch


def build(image_dim: int, hidden_dims, latent_dim: int, seed: int = 0, fused_adam: bool = False):
    torch = _torch()
    nn = torch.nn

    class MLPVAE(nn.Module):
        def __init__(self):
            super().__init__()
            dims = (image_dim, *hidden_dims)
            self.encoder = nn.Sequential(*[m for a, b in zip(dims[:-1], dims[1:])
                                           for m in (nn.Linear(a, b), nn.ReLU())])
            self.head = nn.Linear(dims[-1], 2 * latent_dim)
            ddims = (latent_dim, *reversed(hidden_dims))
            self.decoder = nn.Sequential(*[m for a, b in zip(ddims[:-1], ddims[1:])
                                           for m in (nn.Linear(a, b), nn.ReLU())],
                                         nn.Linear(ddims[-1], image_dim))

        def forward(self, x):
            mean, log_var = self.head(self.encoder(x)).chunk(2, dim=-1)
            z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
            logits = self.decoder(z)
            rec = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
            kl = 0.5 * (mean.pow(2) + torch.expm1(log_var) - log_var).sum(-1)
            return (rec + kl).mean()

    torch.manual_seed(seed)
    model = MLPVAE()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused_adam or None)


def train_epoch_idiomatic(model, optimizer, loader) -> float:
    """One epoch the way most tutorials write it; returns images per second."""
    torch = _torch()
    start, seen = time.perf_counter(), 0
    for (x,) in loader:
        x = torch.bernoulli(x)
        loss = model(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += x.shape[0]
    return seen / (time.perf_counter() - start)


def train_epoch_tuned(model, optimizer, images, batch_size: int) -> float:
    """One epoch with the data as one tensor and randperm batches; returns images per second."""
    torch = _torch()
    start = time.perf_counter()
    order = torch.randperm(images.shape[0])
    steps = images.shape[0] // batch_size
    for step in range(steps):
        probs = images[order[step * batch_size:(step + 1) * batch_size]]
        x = (torch.rand_like(probs) < probs).float()
        loss = model(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


class Reference:
    """Both loops on the same data, ready to be run one epoch at a time (for A/B alternation)."""

    def __init__(self, images_u8: np.ndarray, hidden_dims, latent_dim: int, batch_size: int,
                 threads: int | None = None):
        torch = _torch()
        if threads:
            torch.set_num_threads(threads)
        self.images = torch.from_numpy(images_u8.reshape(len(images_u8), -1).astype(np.float32) / 255.0)
        self.batch_size = batch_size
        dim = self.images.shape[1]
        self.idiomatic = build(dim, hidden_dims, latent_dim, seed=0)
        self.tuned = build(dim, hidden_dims, latent_dim, seed=0, fused_adam=True)
        dataset = torch.utils.data.TensorDataset(self.images)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                                  drop_last=True)
        self.version = torch.__version__
        self.threads = torch.get_num_threads()

    def epoch_idiomatic(self) -> float:
        _torch().set_flush_denormal(False)
        return train_epoch_idiomatic(*self.idiomatic, self.loader)

    def epoch_tuned(self) -> float:
        _torch().set_flush_denormal(True)
        try:
            return train_epoch_tuned(*self.tuned, self.images, self.batch_size)
        finally:
            _torch().set_flush_denormal(False)
