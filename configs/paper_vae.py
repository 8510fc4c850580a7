"""The published plain VAE on dynamically binarised Fashion-MNIST (Tomczak & Welling, 2018;
Norouzi et al., 2020: test NLL 228.70 ± 0.15 nats, k = 5000).

Gated MLP 784-300-300-40 (and mirrored), He-normal weights, log-variances clipped to [-6, 2];
Adam 5e-4 after dividing each tensor's gradient by its norm, batch 100; β warm-up over 100
epochs; first 50,000 training images to train on, the other 10,000 to validate on; early
stopping with patience 50, at most 2,000 epochs; the best epoch is tested.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.train_split = "train[:50000]"
    config.data.validation_split = "train[50000:]"
    config.model.arch = "mlp"
    config.model.hidden_dims = (300, 300)
    config.model.latent_dim = 40
    config.model.activation = "gated"
    config.model.kernel_init = "he_normal"
    config.model.log_var_clip = (-6.0, 2.0)
    config.model.init_output_bias = False
    config.train.batch_size = 100
    config.train.learning_rate = 5e-4
    config.train.lr_schedule = "constant"
    config.train.normalize_grads = True
    config.train.ema_decay = 0.0
    config.train.objective = "elbo"
    config.train.num_samples = 1
    config.train.kl_warmup_epochs = 100.0
    config.train.num_epochs = 2000
    config.train.early_stopping_patience = 50
    return config
